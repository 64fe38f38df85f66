"""Dependency outages on the production stack: the API says it is not ready while its own Postgres is
down, with Retry-After, and recovers by itself when Postgres is back. Real processes throughout: our
own Postgres (not the machine's), `mambaft api`."""

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.db import get_engine
from app.migrate import upgrade_database

from .own_postgres import OwnPostgres
from .servers import ApiServer

RECOVERY_TIMEOUT_S = 30


@pytest.fixture
def postgres() -> Iterator[OwnPostgres]:
    server = OwnPostgres().init()
    try:
        server.start()
        upgrade_database(server.url)
        yield server
    finally:
        get_engine(server.url).dispose()
        server.remove()


@pytest.fixture
def api(tmp_path: Path, postgres: OwnPostgres) -> Iterator[ApiServer]:
    server = ApiServer(
        tmp_path,
        {
            "MAMBAFT_DATA_DIR": str(tmp_path / "var"),
            "MAMBAFT_DATABASE_URL": postgres.url,
            "MAMBAFT_AUTH_DISABLED": "true",
        },
    ).wait_up()
    yield server
    server.stop()


def wait_for_status(url: str, status: int) -> httpx.Response:
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while True:
        response = httpx.get(url, timeout=10)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.5)


def test_readyz_is_503_with_retry_after_while_postgres_is_down_and_recovers(
    api: ApiServer, postgres: OwnPostgres
) -> None:
    assert wait_for_status(f"{api.url}/readyz", 200).status_code == 200
    assert httpx.get(f"{api.url}/v1/files", timeout=10).status_code == 200  # the pool now holds connections

    postgres.stop()
    down = httpx.get(f"{api.url}/readyz", timeout=10)
    read = httpx.get(f"{api.url}/v1/files", timeout=10)

    assert down.status_code == 503 and int(down.headers["retry-after"]) > 0
    assert down.json()["checks"]["database"].startswith("unavailable")
    assert (read.status_code, read.json()["error"]["code"]) == (503, "database_unavailable")
    assert int(read.headers["retry-after"]) > 0

    postgres.start()

    assert wait_for_status(f"{api.url}/readyz", 200).status_code == 200
    assert wait_for_status(f"{api.url}/v1/files", 200).status_code == 200  # stale pooled connections replaced
