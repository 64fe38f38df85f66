"""Real services for the end-to-end and worker tests: a fresh Postgres database, a Redis database of
our own, an S3 server (moto), the tiny models, and an embedded deployment in a temp folder."""

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from moto.server import ThreadedMotoServer

from app.db import get_engine
from app.settings import Settings
from app.storage import ObjectStorage, storage_from_settings
from worker.bootstrap import ensure_tiny_models

from .factories import clean_env, free_port, make_settings
from .service import REAPER_INTERVAL_S, WEBHOOK_ENV, Service

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_LOCK_KEY = "mambaft:e2e:lock"
S3_BUCKET = "mambaft-e2e"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("models")
    ensure_tiny_models(folder)
    return folder


@pytest.fixture(scope="session")
def aws_credentials() -> Iterator[None]:
    """Dummy credentials for boto3 (in this process and, inherited, in the service's subprocesses)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "testing")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        yield


@pytest.fixture(scope="session")
def s3_endpoint(aws_credentials: None) -> Iterator[str]:
    """An S3-compatible server on a free loopback port, holding the bucket S3_BUCKET."""
    import boto3

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=S3_BUCKET)
    yield endpoint
    server.stop()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, uniquely named database, dropped afterwards (other test runs share the server)."""
    name = f"mambaft_e2e_{uuid.uuid4().hex[:12]}"
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield url
    get_engine(url).dispose()  # this process's pooled connections would block the drop
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A Redis database number no concurrent run is using: claimed with a lock key, flushed after."""
    for db in range(15, 0, -1):
        client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
        if client.set(REDIS_LOCK_KEY, "1", nx=True, ex=1800):
            try:
                yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
            finally:
                client.flushdb()
            return
    pytest.fail("no free Redis database (1-15)")


@pytest.fixture
def settings(tmp_path: Path, models_dir: Path) -> Settings:
    """The embedded deployment in a temp folder, with checkpoints every 2 steps and quick heartbeats."""
    return make_settings(tmp_path / "var", models_dir=models_dir, checkpoint_every_steps=2, heartbeat_seconds=1)


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Service]:
    """`mambaft serve` with a fresh data dir: it migrates, builds the tiny models, starts its worker."""
    settings = Settings(data_dir=tmp_path / "var")
    assert settings.models_dir is not None
    service = Service(url=f"http://127.0.0.1:{free_port()}", models_dir=settings.models_dir, settings=settings, logs=[])
    port = service.url.rsplit(":", 1)[1]
    args = ["serve", "--host", "127.0.0.1", "--port", port, "--data-dir", str(settings.data_dir)]
    service.start(args, clean_env(MAMBAFT_REAPER_INTERVAL_SECONDS=REAPER_INTERVAL_S, **WEBHOOK_ENV), tmp_path)
    yield service
    service.stop()


@pytest.fixture
def storage(settings: Settings) -> ObjectStorage:
    return storage_from_settings(settings)
