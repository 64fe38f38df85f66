"""Per-key limits: requests per second and unfinished jobs per owner; beyond them 429 with Retry-After."""

import threading
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.factories import TEXT, job_body, jsonl, write_model
from app.limits import RateLimiter
from app.settings import Settings

from .servers import api_with_key

RATE = 2


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def settings(make_settings: Callable[..., Settings], database_url: str) -> Settings:
    return make_settings(database_url=database_url, rate_limit_per_second=RATE, max_concurrent_jobs=1)


@pytest.fixture
def clock(app: FastAPI) -> FakeClock:
    """Freeze the app's limiter clock, so a test decides when tokens come back."""
    clock = FakeClock()
    app.state.rate_limiter = RateLimiter(app.state.settings.rate_limit_per_second, clock=clock)
    return clock


def assert_rate_limited(response: httpx.Response, code: str = "rate_limit_exceeded") -> None:
    assert response.status_code == 429, response.text
    assert int(response.headers["retry-after"]) >= 1
    error = response.json()["error"]
    assert (error["code"], error["type"]) == (code, "requests")
    assert set(error) == {"code", "message", "param", "type"}


def test_requests_beyond_the_rate_get_429_with_retry_after(client: TestClient, clock: FakeClock) -> None:
    statuses = [client.get("/v1/files").status_code for _ in range(RATE)]

    assert statuses == [200] * RATE
    assert_rate_limited(client.get("/v1/files"))


def test_the_rate_comes_back_after_retry_after(client: TestClient, clock: FakeClock) -> None:
    for _ in range(RATE):
        client.get("/v1/files")
    retry_after = int(client.get("/v1/files").headers["retry-after"])

    clock.now += retry_after

    assert client.get("/v1/files").status_code == 200


def test_the_rate_is_counted_per_owner(client: TestClient, bob: TestClient, clock: FakeClock) -> None:
    for _ in range(RATE):
        client.get("/v1/files")
    assert_rate_limited(client.get("/v1/files"))

    assert bob.get("/v1/files").status_code == 200


def test_bad_keys_do_not_spend_a_tenants_rate(app: FastAPI, client: TestClient, clock: FakeClock) -> None:
    for _ in range(5):
        TestClient(app).get("/v1/files", headers={"Authorization": "Bearer mft-wrong"})

    assert client.get("/v1/files").status_code == 200


def test_limits_are_per_app_instance(make_settings: Callable[..., Settings], database_url: str) -> None:
    from app.main import create_app

    settings = make_settings(database_url=database_url, rate_limit_per_second=RATE)

    assert create_app(settings).state.rate_limiter is not create_app(settings).state.rate_limiter


def test_a_job_beyond_the_concurrent_limit_gets_429(client: TestClient, training_file: str, clock: FakeClock) -> None:
    first = client.post("/v1/fine_tuning/jobs", json=job_body(training_file))
    assert first.status_code == 200
    clock.now += 10

    assert_rate_limited(
        client.post("/v1/fine_tuning/jobs", json=job_body(training_file)), code="concurrent_jobs_limit_exceeded"
    )


def test_a_finished_job_frees_its_slot(client: TestClient, training_file: str, clock: FakeClock) -> None:
    first = client.post("/v1/fine_tuning/jobs", json=job_body(training_file)).json()["id"]
    clock.now += 10
    client.post(f"/v1/fine_tuning/jobs/{first}/cancel")
    clock.now += 10

    assert client.post("/v1/fine_tuning/jobs", json=job_body(training_file)).status_code == 200


def test_a_retried_create_replays_instead_of_429(client: TestClient, training_file: str, clock: FakeClock) -> None:
    headers = {"Idempotency-Key": "once"}
    first = client.post("/v1/fine_tuning/jobs", json=job_body(training_file), headers=headers)
    clock.now += 10

    again = client.post("/v1/fine_tuning/jobs", json=job_body(training_file), headers=headers)

    assert (again.status_code, again.json()["id"]) == (200, first.json()["id"])


def test_the_job_limit_is_per_owner(client: TestClient, bob: TestClient, training_file: str, clock: FakeClock) -> None:
    client.post("/v1/fine_tuning/jobs", json=job_body(training_file))
    bobs_file = bob.post(
        "/v1/files", files={"file": ("b.jsonl", b'{"text": "b"}\n')}, data={"purpose": "fine-tune"}
    ).json()["id"]

    assert bob.post("/v1/fine_tuning/jobs", json=job_body(bobs_file)).status_code == 200


def test_limits_are_off_at_zero() -> None:
    defaults = Settings.model_fields
    assert (defaults["rate_limit_per_second"].default, defaults["max_concurrent_jobs"].default) == (0, 0)
    limiter = RateLimiter(0, clock=FakeClock())

    for _ in range(100):
        limiter.check("alice")


CONCURRENT_CREATES = 20
JOB_CAP = 2


# Real server threads and connections, all released at once: creates that each counted the owner's jobs
# before any of them had inserted its own would all get in.
@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_concurrent_creates_never_exceed_the_job_cap(tmp_path: Path, settings: Settings) -> None:
    assert settings.models_dir is not None
    write_model(settings.models_dir, "mamba-tiny", "mamba")
    server, _, key = api_with_key(tmp_path, settings, MAMBAFT_MAX_CONCURRENT_JOBS=str(JOB_CAP))
    limits = httpx.Limits(max_connections=CONCURRENT_CREATES)
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with (
            httpx.Client(base_url=server.url, headers=headers, timeout=60, limits=limits) as http,
            ThreadPoolExecutor(CONCURRENT_CREATES) as pool,
        ):
            training_file = http.post(
                "/v1/files", files={"file": ("t.jsonl", jsonl(TEXT))}, data={"purpose": "fine-tune"}
            ).json()["id"]
            start = threading.Barrier(CONCURRENT_CREATES)

            def create(_: int) -> int:
                start.wait()
                return http.post("/v1/fine_tuning/jobs", json=job_body(training_file)).status_code

            statuses = Counter(pool.map(create, range(CONCURRENT_CREATES)))
            listed = http.get("/v1/fine_tuning/jobs", params={"limit": 100}).json()["data"]
    finally:
        server.stop()

    assert statuses == {200: JOB_CAP, 429: CONCURRENT_CREATES - JOB_CAP}, server.log.read_text()[-3000:]
    assert len(listed) == JOB_CAP
