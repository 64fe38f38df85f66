"""S3Storage against a real S3 protocol server (moto)."""

import io
import os
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from app.settings import Settings
from app.storage import ObjectNotFound, S3Storage, storage_from_settings

from .conftest import S3_BUCKET


@pytest.fixture
def prefix() -> str:
    return f"run-{uuid.uuid4().hex}"


def test_s3_storage_round_trip(s3_endpoint: str, prefix: str, tmp_path: Path) -> None:
    storage = S3Storage(f"s3://{S3_BUCKET}/{prefix}", endpoint_url=s3_endpoint)
    payload = os.urandom(3 * 1024 * 1024 + 17)
    key = "jobs/ftjob-1/adapter.tar.gz"

    assert not storage.exists(key)
    assert storage.put_stream(key, io.BytesIO(payload)) == len(payload)
    assert storage.exists(key)
    assert b"".join(storage.iter_bytes(key, chunk_size=1024 * 1024)) == payload
    storage.get_file(key, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == payload

    storage.delete(key)
    storage.delete(key)  # deleting what is gone is fine
    assert not storage.exists(key)
    with pytest.raises(ObjectNotFound):
        b"".join(storage.iter_bytes(key))
    with pytest.raises(ObjectNotFound):
        storage.get_file(key, tmp_path / "missing")
    assert not (tmp_path / "missing").exists()


def test_s3_storage_keeps_objects_under_its_prefix(s3_endpoint: str, prefix: str) -> None:
    storage = S3Storage(f"s3://{S3_BUCKET}/{prefix}/", endpoint_url=s3_endpoint)
    storage.put_stream("files/file-1", io.BytesIO(b"hello"))
    listed = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket=S3_BUCKET, Prefix=prefix)
    assert [obj["Key"] for obj in listed["Contents"]] == [f"{prefix}/files/file-1"]
    with pytest.raises(ValueError):
        storage.put_stream("../escape", io.BytesIO(b"x"))


def test_storage_from_settings_builds_s3_storage_and_ping_checks_the_bucket(
    s3_endpoint: str, prefix: str, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, storage_url=f"s3://{S3_BUCKET}/{prefix}", s3_endpoint_url=s3_endpoint)
    storage = storage_from_settings(settings)
    assert isinstance(storage, S3Storage)
    storage.ping()
    with pytest.raises(ClientError):
        S3Storage("s3://no-such-bucket", endpoint_url=s3_endpoint).ping()
