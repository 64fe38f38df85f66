"""A burst of concurrent requests, more than the API has worker threads and database connections, is
answered in full: requests queue for a database session instead of stalling on the connection pool."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from app.auth.service import create_api_key
from app.db import session_scope
from app.settings import Settings

from .servers import ApiServer

# Above the API's 40 worker threads: with an unlimited number of requests holding a session, threads
# blocked waiting for a pooled connection while the requests holding the connections waited for a
# thread, until the pool's 30 s timeout answered 500.
CONCURRENT = 100
REQUESTS = 500


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_burst_beyond_the_threads_and_the_connection_pool_gets_no_5xx(tmp_path: Path, settings: Settings) -> None:
    with session_scope(settings.database_url) as session:
        _, key = create_api_key(session=session, owner="alice")
    env = {"MAMBAFT_DATA_DIR": str(settings.data_dir), "MAMBAFT_DATABASE_URL": settings.database_url}
    server = ApiServer(tmp_path, env).wait_up()
    limits = httpx.Limits(max_connections=CONCURRENT)
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with (
            httpx.Client(base_url=server.url, headers=headers, timeout=120, limits=limits) as http,
            ThreadPoolExecutor(CONCURRENT) as pool,
        ):
            statuses = list(pool.map(lambda _: http.get("/v1/fine_tuning/jobs").status_code, range(REQUESTS)))
    finally:
        server.stop()

    assert statuses == [200] * REQUESTS
