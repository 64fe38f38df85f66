"""Fixtures shared by every test folder (a folder's own conftest may override any of them by name).

- `make_settings(**overrides)`: a `Settings` living in this test's temp folder (data dir, SQLite file,
  local object store, models dir); keyword overrides win.
- `create_database(backend="sqlite" | "postgres")`: a new database at the latest migration, returned
  as a URL and dropped after the test. Postgres databases are uniquely named on the server at
  MAMBAFT_TEST_POSTGRES_URL (default 127.0.0.1:5432, database `test`); tests skip if it is unreachable.
- `database_url`: one migrated database, SQLite by default; parametrize it indirectly to run a test on
  both: `@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)`.
- `settings`: `make_settings(database_url=database_url)`; parametrize it indirectly with a dict of
  overrides to change a setting: `@pytest.mark.parametrize("settings", [{"max_attempts": 1}], indirect=True)`.
- `broker`: a `FakeBroker` recording the ids sent per kind; set `broker.reachable = False` to fail it.
- `app`: `create_app(settings)` with `broker` in place of the real queue.
- `make_client(owner="alice")`: a TestClient for `app` authenticated with a new API key of `owner`.
- `client`: `make_client("alice")`.
"""

import importlib.util
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.auth.service import create_api_key
from app.db import get_engine, session_scope
from app.deps import get_broker
from app.main import create_app
from app.migrate import upgrade_database
from app.settings import Settings

POSTGRES_ADMIN_URL = os.environ.get("MAMBAFT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _gpu_missing() -> str | None:
    """Why tests marked `gpu` cannot run here, or None. torch loads only when the kernels are installed."""
    if importlib.util.find_spec("mamba_ssm") is None:
        return "needs the mamba-ssm CUDA kernels"
    import torch

    return None if torch.cuda.is_available() else "needs CUDA"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_tests = [item for item in items if item.get_closest_marker("gpu")]
    reason = _gpu_missing() if gpu_tests else None
    for item in gpu_tests if reason else []:
        item.add_marker(pytest.mark.skip(reason=reason))


def _postgres_url(name: str) -> str:
    base = POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}"


def _admin(statement: str) -> None:
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3) as admin:
        admin.execute(statement)


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once per session; each test copies it (much faster than migrating)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    url = f"sqlite:///{path}"
    upgrade_database(url)
    get_engine(url).dispose()
    return path


@pytest.fixture(scope="session")
def _postgres_template() -> Iterator[str]:
    """A Postgres database migrated once per session, the template of each test's database."""
    name = f"mambaft_template_{uuid.uuid4().hex[:12]}"
    try:
        _admin(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as error:
        pytest.skip(f"PostgreSQL unreachable at {POSTGRES_ADMIN_URL}: {error}")
    try:
        upgrade_database(_postgres_url(name))
        yield name
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def create_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Factory: `create_database("sqlite" | "postgres") -> url` of a new database at the latest migration."""
    created: list[tuple[str, str | None]] = []  # (url, Postgres name to drop)

    def create(backend: str = "sqlite") -> str:
        if backend == "sqlite":
            path = tmp_path / f"db-{uuid.uuid4().hex[:8]}.db"
            shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
            url, name = f"sqlite:///{path}", None
        elif backend == "postgres":
            template = request.getfixturevalue("_postgres_template")
            name = f"mambaft_test_{uuid.uuid4().hex[:12]}"
            _admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
            url = _postgres_url(name)
        else:
            raise ValueError(f"unknown database backend {backend!r}")
        created.append((url, name))
        return url

    yield create
    for url, name in created:
        get_engine(url).dispose()  # pooled connections would keep the file open / block the drop
        if name is not None:
            _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(request: pytest.FixtureRequest, create_database: Callable[..., str]) -> str:
    return create_database(getattr(request, "param", "sqlite"))


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return Settings(**{"data_dir": tmp_path / "var", **overrides})

    return make


@pytest.fixture
def settings(request: pytest.FixtureRequest, make_settings: Callable[..., Settings], database_url: str) -> Settings:
    return make_settings(database_url=database_url, **getattr(request, "param", {}))


@dataclass
class FakeBroker:
    """Stands in for app.queue: records the ids it was sent, per kind of work. `reachable = False` fails
    pings and sends alike; `loses_messages = True` answers pings but fails every send (a broker that went
    down between the check and the send)."""

    enqueued: list[str] = field(default_factory=list)  # jobs
    evaluations: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)  # uids of models to build
    reachable: bool = True
    loses_messages: bool = False

    def enqueue_job(self, *, settings: Settings, job_id: str) -> None:
        self._send(self.enqueued, job_id)

    def enqueue_evaluation(self, *, settings: Settings, evaluation_id: str) -> None:
        self._send(self.evaluations, evaluation_id)

    def enqueue_model_creation(self, *, settings: Settings, model_uid: str) -> None:
        self._send(self.models, model_uid)

    def _send(self, sent: list[str], object_id: str) -> None:
        self._check()
        if self.loses_messages:
            raise ConnectionError("broker lost the message (FakeBroker)")
        sent.append(object_id)

    def enqueue_completion(self, *, settings: Settings, completion_id: str) -> None:
        self._check()
        self.enqueued.append(completion_id)

    def ping_broker(self, *, settings: Settings) -> None:
        self._check()

    def _check(self) -> None:
        if not self.reachable:
            raise ConnectionError("broker unreachable (FakeBroker)")


@pytest.fixture
def broker() -> FakeBroker:
    return FakeBroker()


@pytest.fixture
def app(settings: Settings, broker: FakeBroker) -> FastAPI:
    application = create_app(settings)
    application.dependency_overrides[get_broker] = lambda: broker
    return application


@pytest.fixture
def make_client(app: FastAPI, settings: Settings) -> Iterator[Callable[..., TestClient]]:
    """Factory: `make_client(owner="alice") -> TestClient` sending a new API key of `owner`."""
    clients: list[TestClient] = []

    def make(owner: str = "alice") -> TestClient:
        with session_scope(settings.database_url) as session:
            _, key = create_api_key(session=session, owner=owner)
        client = TestClient(app, headers={"Authorization": f"Bearer {key}"})
        client.__enter__()  # one event loop for all of this client's requests
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client("alice")


@pytest.fixture
def model_requests(broker: FakeBroker) -> list[str]:
    """Uids of the models POST /v1/models asked a worker to build (the FakeBroker records them)."""
    return broker.models


@pytest.fixture(scope="session")
def tiny_mamba(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped tiny Mamba base model with its byte tokenizer, built once per test session."""
    from worker.engine.tiny_model import create_tiny_model  # torch loads only for tests that need it

    return create_tiny_model(tmp_path_factory.mktemp("models") / "mamba-tiny", "mamba")


@pytest.fixture(scope="session")
def tiny_mamba2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped tiny Mamba-2 base model, built once per test session."""
    from worker.engine.tiny_model import create_tiny_model

    return create_tiny_model(tmp_path_factory.mktemp("models") / "mamba2-tiny", "mamba2")
