"""Object storage backends: a local folder (embedded default) and S3-compatible servers.

Every write is atomic: an object becomes visible under its key only once all its bytes are stored,
so a reader never sees a half-written upload, whatever crashes in between.
"""

import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlparse

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as EndpointUnreachable

from app.settings import Settings

CHUNK = 1024 * 1024
# The server could not be reached or dropped the connection: a later try may succeed. Errors the server
# answered with (denied, no such bucket) are not retried: they would only come back.
UNREACHABLE = (EndpointUnreachable, HTTPClientError)
FIRST_RETRY_WAIT_S = 1.0
MAX_RETRY_WAIT_S = 10.0


class ObjectNotFound(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(f"no object stored under {key!r}")
        self.key = key


class StorageUnavailable(Exception):
    """Object storage stayed unreachable for as long as we were willing to retry."""


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


# Streams above this size go up as a multipart upload, which S3 publishes only on completion.
S3_TRANSFER = TransferConfig(multipart_threshold=64 * CHUNK, multipart_chunksize=64 * CHUNK)
NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})


@lru_cache
def _s3_client(endpoint_url: str | None, region: str) -> Any:
    # One client per endpoint: creating one costs tens of milliseconds, and clients are thread-safe.
    # Credentials come from boto3's standard chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, ...).
    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region)


def _is_not_found(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code")) in NOT_FOUND_CODES


class _CountingReader:
    """Wraps a stream to count the bytes boto3 reads from it (upload_fileobj returns nothing)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self.stream.read(size)
        self.count += len(chunk)
        return chunk


class S3Storage:
    """Objects in an S3-compatible bucket under an optional key prefix (`s3://bucket/prefix`).

    Writes are atomic by S3's own rules: a PUT or a completed multipart upload appears whole or not at
    all, and boto3 aborts a multipart upload that fails midway.
    """

    def __init__(self, url: str, *, endpoint_url: str | None = None, region: str = "us-east-1") -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ValueError(f"expected s3://bucket[/prefix], got {url!r}")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        self.client = _s3_client(endpoint_url, region)

    def _key(self, key: str) -> str:
        parts = key.split("/")
        if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"invalid storage key: {key!r}")
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_stream(self, key: str, stream: BinaryIO) -> int:
        reader = _CountingReader(stream)
        self.client.upload_fileobj(reader, self.bucket, self._key(key), Config=S3_TRANSFER)
        return reader.count

    def put_file(self, key: str, path: Path) -> int:
        with path.open("rb") as src:
            return self.put_stream(key, src)

    def iter_bytes(self, key: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as error:
            if _is_not_found(error):
                raise ObjectNotFound(key) from None
            raise
        body = response["Body"]
        try:
            yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def get_file(self, key: str, path: Path) -> None:
        try:
            # download_file writes a temp file and renames it, so `path` never holds a partial object.
            self.client.download_file(self.bucket, self._key(key), str(path), Config=S3_TRANSFER)
        except ClientError as error:
            if _is_not_found(error):
                raise ObjectNotFound(key) from None
            raise

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as error:
            if _is_not_found(error):
                return False
            raise
        return True

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def ping(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)


def storage_from_settings(settings: Settings) -> ObjectStorage:
    url = settings.storage_url
    if url.startswith("file://"):
        return LocalStorage(Path(url.removeprefix("file://")))
    if url.startswith("s3://"):
        return S3Storage(url, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region)
    raise ValueError(f"unsupported MAMBAFT_STORAGE_URL scheme: {url!r} (use file:// or s3://)")


def put_file_retrying(
    storage: ObjectStorage,
    key: str,
    path: Path,
    *,
    retry_seconds: float,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> int:
    """`storage.put_file`, tried again with doubling waits while the server is unreachable, for at most
    `retry_seconds`; then StorageUnavailable. Safe to repeat: a write is atomic, so a failed try leaves
    nothing under `key` and the next one stores it whole."""
    deadline = clock() + retry_seconds
    wait = FIRST_RETRY_WAIT_S
    while True:
        try:
            return storage.put_file(key, path)
        except UNREACHABLE as error:
            left = deadline - clock()
            if left <= 0:
                raise StorageUnavailable(f"object storage unreachable for {retry_seconds}s: {error}") from error
            sleep(min(wait, left))
            wait = min(wait * 2, MAX_RETRY_WAIT_S)
