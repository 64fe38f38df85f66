"""Connections under load: a burst of concurrent requests, more than the API has worker threads and
database connections, is answered in full, and a pooled connection left idle is still answered."""

import http.client
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from app.cli import KEEP_ALIVE_S
from app.settings import Settings

from .servers import ApiServer, api_with_key

# Above the API's 40 worker threads: with an unlimited number of requests holding a session, threads
# blocked waiting for a pooled connection while the requests holding the connections waited for a
# thread, until the pool's 30 s timeout answered 500.
CONCURRENT = 100
REQUESTS = 500
# uvicorn's own keep-alive, the one that closed idle connections under clients' feet.
UVICORN_DEFAULT_KEEP_ALIVE_S = 5


def _outcome(http: httpx.Client) -> str:
    """The status code, or the transport error a client saw instead of an answer."""
    try:
        return str(http.get("/v1/fine_tuning/jobs").status_code)
    except httpx.TransportError as error:
        return f"{type(error).__name__}: {error}"


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_burst_beyond_the_threads_and_the_connection_pool_gets_no_5xx(tmp_path: Path, settings: Settings) -> None:
    server, _, key = api_with_key(tmp_path, settings)
    limits = httpx.Limits(max_connections=CONCURRENT)
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with (
            httpx.Client(base_url=server.url, headers=headers, timeout=120, limits=limits) as http,
            ThreadPoolExecutor(CONCURRENT) as pool,
        ):
            outcomes = Counter(pool.map(lambda _: _outcome(http), range(REQUESTS)))
    finally:
        server.stop()

    assert outcomes == {"200": REQUESTS}, f"{outcomes}\nAPI log:\n{server.log.read_text()[-3000:]}"


def _get_healthz(connection: http.client.HTTPConnection) -> int:
    connection.request("GET", "/healthz")
    response = connection.getresponse()
    response.read()
    return response.status


def test_an_idle_keep_alive_connection_is_still_answered(tmp_path: Path, settings: Settings) -> None:
    assert KEEP_ALIVE_S > UVICORN_DEFAULT_KEEP_ALIVE_S
    server = ApiServer(tmp_path, {"MAMBAFT_DATA_DIR": str(settings.data_dir)}).wait_up()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        first = _get_healthz(connection)
        socket_used = connection.sock
        time.sleep(UVICORN_DEFAULT_KEEP_ALIVE_S + 1)
        # With uvicorn's default the server had closed the connection: this raised RemoteDisconnected.
        second = _get_healthz(connection)
        assert connection.sock is socket_used
    finally:
        connection.close()
        server.stop()

    assert (first, second) == (200, 200)
