"""Small builders for the API tests: JSONL bodies, uploads, job requests, model folders, row edits."""

import json
import struct
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from app.db import session_scope
from app.jobs.models import Job
from app.settings import Settings

TEXT = {"text": "the cat sat on the mat"}
PROMPT = {"prompt": "reverse: abc =", "completion": " cba"}
CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def jsonl(*records: Any) -> bytes:
    """One line per record; strings are taken as raw lines (for broken ones)."""
    return b"".join((r if isinstance(r, str) else json.dumps(r)).encode() + b"\n" for r in records)


def upload(
    client: TestClient,
    content: bytes,
    *,
    filename: str = "train.jsonl",
    purpose: str = "fine-tune",
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    return client.post(
        "/v1/files", files={"file": (filename, content)}, data={"purpose": purpose}, headers=headers or {}
    )


def upload_raw_filename(client: TestClient, filename: bytes, content: bytes) -> httpx.Response:
    """An upload whose Content-Disposition filename is sent byte for byte (httpx would escape it)."""
    boundary = b"mambaft-test-boundary"
    body = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n--" + boundary + b"--\r\n"
    )
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"}
    return client.post("/v1/files", content=body, headers=headers)


def job_body(training_file: str, /, **overrides: Any) -> dict[str, Any]:
    """A job request on the `models` fixture's mamba-tiny; overrides may replace training_file too."""
    return {"model": "mamba-tiny", "training_file": training_file, **overrides}


def write_model(models_dir: Path, model_id: str, model_type: str, shapes: list[list[int]] | None = None) -> None:
    """An HF-format folder: config.json plus a safetensors file whose header declares `shapes`."""
    folder = models_dir / model_id
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    if shapes is None:
        return
    header = {f"w{i}": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]} for i, shape in enumerate(shapes)}
    encoded = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(encoded)) + encoded)


def update_job(settings: Settings, job_id: str, **fields: Any) -> None:
    """Change a job row directly, standing in for what the worker would write."""
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        for name, value in fields.items():
            setattr(job, name, value)
