"""Uploads: streamed with bounded memory, hostile names stored safely, compressed bodies never inflated."""

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from fastapi.testclient import TestClient

from api.factories import TEXT, jsonl, upload, upload_raw_filename
from app.settings import Settings
from app.storage import storage_from_settings

from .servers import ApiServer

MIB = 1024 * 1024
GIB = 1024 * MIB
# The largest upload any test here sends; the server is started with room for it.
LARGEST_UPLOAD = GIB
RSS_GROWTH_LIMIT = 50 * MIB


class LazyJsonl(io.RawIOBase):
    """`size` bytes of valid text-format JSONL, made as they are read (never all in memory)."""

    def __init__(self, size: int, line_bytes: int = 64 * 1024) -> None:
        record = json.dumps({"text": "x" * (line_bytes - 13)}).encode() + b"\n"
        self.line = record
        self.left = size - size % len(record)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        # One whole line per read (the left size is a multiple of it); readers loop until 0.
        if self.left == 0 or len(buffer) < len(self.line):
            return 0 if self.left == 0 else self._partial(buffer)
        buffer[: len(self.line)] = self.line
        self.left -= len(self.line)
        return len(self.line)

    def _partial(self, buffer: memoryview) -> int:
        raise ValueError(f"reads must ask for at least {len(self.line)} bytes, got {len(buffer)}")


def vm_hwm(pid: int) -> int:
    """The process's peak resident set size, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM")


@pytest.fixture
def api_server(tmp_path: Path, settings: Settings) -> Iterator[ApiServer]:
    """The API as its own process on the test's SQLite database, auth off (loopback only)."""
    server = ApiServer(
        tmp_path,
        {
            "MAMBAFT_DATA_DIR": str(settings.data_dir),
            "MAMBAFT_DATABASE_URL": settings.database_url,
            "MAMBAFT_AUTH_DISABLED": "true",
            "MAMBAFT_MAX_UPLOAD_BYTES": str(LARGEST_UPLOAD + MIB),
        },
    ).wait_up()
    yield server
    server.stop()


# 200 MiB in the default suite; 1 GiB only under `make soak` (it writes 1 GiB to storage).
@pytest.mark.parametrize(
    "size", [pytest.param(200 * MIB, id="200MiB"), pytest.param(GIB, id="1GiB", marks=pytest.mark.soak)]
)
def test_a_big_upload_grows_the_api_rss_by_under_50_mib(api_server: ApiServer, size: int) -> None:
    with httpx.Client(base_url=api_server.url, timeout=300) as http:
        # Warm up: the first upload imports and allocates what every later one reuses.
        warm_up = http.post("/v1/files", files={"file": ("w.jsonl", jsonl(TEXT))}, data={"purpose": "fine-tune"})
        assert warm_up.is_success
        before = psutil.Process(api_server.process.pid).memory_info().rss

        response = http.post("/v1/files", files={"file": ("big.jsonl", LazyJsonl(size))}, data={"purpose": "fine-tune"})

    assert response.status_code == 200, response.text
    assert response.json()["bytes"] > size - MIB
    growth = vm_hwm(api_server.process.pid) - before
    print(f"{size / MIB:.0f} MiB upload: peak RSS grew by {growth / MIB:.1f} MiB")  # shown by `pytest -rP`
    assert growth < RSS_GROWTH_LIMIT, f"peak RSS grew by {growth / MIB:.0f} MiB"


@pytest.mark.parametrize(
    "raw",
    [
        b"../../../etc/cron.d/x.jsonl",
        b"..\\..\\windows\\x.jsonl",
        b"a\x00b.jsonl",
        b"x" * 1000,
        b"<img src=x onerror=alert(1)>.jsonl",
    ],
)
def test_hostile_filenames_are_stored_safely_and_returned_escaped(
    client: TestClient, settings: Settings, raw: bytes
) -> None:
    response = upload_raw_filename(client, raw, jsonl(TEXT))

    assert response.status_code == 200, response.text
    body = response.json()
    name = body["filename"]
    assert "/" not in name and "\\" not in name and "\x00" not in name and len(name) <= 255
    assert all(ch.isprintable() for ch in name)
    # The name never reaches storage: the object lives under the file id alone.
    objects = [p for p in (settings.data_dir / "objects").rglob("*") if p.is_file()]
    assert [p.name for p in objects] == [f"{body['id']}.jsonl"]
    # And it comes back as JSON, escaped, equal to what the listing shows.
    assert client.get(f"/v1/files/{body['id']}").json()["filename"] == name


def gzip_bomb(size: int = 64 * MIB) -> bytes:
    """`size` bytes of a valid JSONL file, gzip-compressed to about a thousandth of that."""
    line = json.dumps({"text": "a" * 1000}).encode() + b"\n"
    return gzip.compress(line * (size // len(line)), compresslevel=9)


def test_a_gzip_compressed_file_is_refused_not_decompressed(client: TestClient, settings: Settings) -> None:
    bomb = gzip_bomb()

    response = upload(client, bomb, filename="train.jsonl.gz")

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_training_file"
    assert "Line 1" in response.json()["error"]["message"]
    assert not storage_from_settings(settings).exists("files")


def test_a_gzip_content_encoded_body_is_refused_not_decompressed(client: TestClient) -> None:
    inner = httpx.Request(
        "POST", "http://x/v1/files", files={"file": ("t.jsonl", gzip_bomb(8 * MIB))}, data={"purpose": "fine-tune"}
    )
    body = gzip.compress(inner.read())

    response = client.post(
        "/v1/files", content=body, headers={"Content-Type": inner.headers["Content-Type"], "Content-Encoding": "gzip"}
    )

    assert response.status_code in (400, 415), response.text
    assert set(response.json()["error"]) == {"code", "message", "param", "type"}
