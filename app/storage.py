"""Object storage backends: a local folder (embedded default) and S3-compatible servers.

Every write is atomic: an object becomes visible under its key only once all its bytes are stored,
so a reader never sees a half-written upload, whatever crashes in between.
"""

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from app.settings import Settings

CHUNK = 1024 * 1024


class ObjectNotFound(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(f"no object stored under {key!r}")
        self.key = key


class ObjectStorage(Protocol):
    def put_stream(self, key: str, stream: BinaryIO) -> int:
        """Store everything `stream` yields under `key`; returns the byte count."""

    def put_file(self, key: str, path: Path) -> int:
        """Store a local file under `key`; returns the byte count."""

    def iter_bytes(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """Yield the object's bytes in chunks; raises ObjectNotFound."""

    def get_file(self, key: str, path: Path) -> None:
        """Copy the object to a local file; raises ObjectNotFound."""

    def exists(self, key: str) -> bool:
        """Whether a complete object is stored under `key`."""

    def delete(self, key: str) -> None:
        """Remove the object if present."""

    def ping(self) -> None:
        """Raise if the backend cannot be reached."""


class LocalStorage:
    """Objects as files under one root; writes go to a temp file renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root) or path == self.root:
            raise ValueError(f"storage key escapes the storage root: {key!r}")
        return path

    def put_stream(self, key: str, stream: BinaryIO) -> int:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".partial-")
        written = 0
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    out.write(chunk)
                    written += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return written

    def put_file(self, key: str, path: Path) -> int:
        with path.open("rb") as src:
            return self.put_stream(key, src)

    def iter_bytes(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        path = self._path(key)
        try:
            src = path.open("rb")
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        with src:
            while chunk := src.read(chunk_size):
                yield chunk

    def get_file(self, key: str, path: Path) -> None:
        source = self._path(key)
        if not source.is_file():
            raise ObjectNotFound(key)
        shutil.copyfile(source, path)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def ping(self) -> None:
        probe = self.root / f".ping-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()


def storage_from_settings(settings: Settings) -> ObjectStorage:
    url = settings.storage_url
    if url.startswith("file://"):
        return LocalStorage(Path(url.removeprefix("file://")))
    raise ValueError(f"unsupported MAMBAFT_STORAGE_URL scheme: {url!r} (use file:// or s3://)")
