"""Writes while the broker (our own Redis) or object storage (our own moto server) is down, against a
real `mambaft api`: each answers 503 with Retry-After and the dependency's code, nothing is created
(the client's retry under the same Idempotency-Key creates it once), /readyz names the dependency, and
once it is back the same writes succeed without restarting the API."""

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from app.celery_config import QUEUE
from app.migrate import upgrade_database
from e2e.conftest import S3_BUCKET
from e2e.factories import demo_slice

from .own_redis import OwnRedis
from .own_s3 import OwnS3
from .servers import ApiServer

RECOVERY_TIMEOUT_S = 60
# Our own Redis is empty, so every message in the queue is one these requests sent.
FILE_BODY = demo_slice("train.jsonl", 8)


@pytest.fixture
def broker() -> Iterator[OwnRedis]:
    server = OwnRedis()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def api(tmp_path: Path, models_dir: Path, postgres_url: str, broker: OwnRedis, s3: OwnS3) -> Iterator[ApiServer]:
    upgrade_database(postgres_url)
    # The ready base model the job and the evaluation name, in this test's own models folder.
    models = tmp_path / "models"
    models.mkdir()
    (models / "mamba-tiny").symlink_to(models_dir / "mamba-tiny")
    server = ApiServer(
        tmp_path,
        {
            "MAMBAFT_DATA_DIR": str(tmp_path / "var"),
            "MAMBAFT_DATABASE_URL": postgres_url,
            "MAMBAFT_BROKER_URL": broker.url,
            "MAMBAFT_STORAGE_URL": f"s3://{S3_BUCKET}/{uuid.uuid4().hex}",
            "MAMBAFT_S3_ENDPOINT_URL": s3.endpoint,
            "MAMBAFT_MODELS_DIR": str(models),
            "MAMBAFT_AUTH_DISABLED": "true",
        },
    ).wait_up()
    yield server
    server.stop()


def wait_ready(api: ApiServer) -> None:
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while (ready := httpx.get(f"{api.url}/readyz", timeout=30)).status_code != 200:
        assert time.monotonic() < deadline, ready.text
        time.sleep(0.5)


def assert_unavailable(response: httpx.Response, code: str) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["type"] == "server_error"
    assert int(response.headers["retry-after"]) > 0


def assert_not_ready_because_of(api: ApiServer, dependency: str) -> None:
    ready = httpx.get(f"{api.url}/readyz", timeout=30)
    assert ready.status_code == 503 and int(ready.headers["retry-after"]) > 0
    checks = ready.json()["checks"]
    # No worker runs beside this API: `workers` reports that, and never makes /readyz 503 by itself.
    down = {name for name, state in checks.items() if state != "ok" and name != "workers"}
    assert down == {dependency}, ready.json()


@contextmanager
def outage(api: ApiServer, server: OwnRedis | OwnS3, dependency: str) -> Iterator[None]:
    """`server` stopped for the body of the with-block (and /readyz blaming it), then back on its port."""
    server.stop()
    assert_not_ready_because_of(api, dependency)
    yield
    server.start()
    wait_ready(api)


def upload(client: httpx.Client, key: str | None = None) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return client.post(
        "/v1/files", files={"file": ("train.jsonl", FILE_BODY)}, data={"purpose": "fine-tune"}, headers=headers
    )


def create_job(client: httpx.Client, training_file: str) -> httpx.Response:
    job = {"model": "mamba-tiny", "training_file": training_file, "lora": {"target_modules": ["in_proj"]}}
    return client.post("/v1/fine_tuning/jobs", json=job, headers={"Idempotency-Key": "job-once"})


def queue_writes(client: httpx.Client, training_file: str) -> dict[str, httpx.Response]:
    """One of each create that hands work to the workers; the job's under an Idempotency-Key."""
    model = {"id": "outage-model", "family": "mamba", "d_model": 16, "n_layer": 1, "d_state": 4}
    evaluation = {"model": "mamba-tiny", "tasks": ["lookup"], "shots": [0], "limit": 4}
    return {
        "job": create_job(client, training_file),
        "model": client.post("/v1/models", json=model),
        "evaluation": client.post("/v1/evaluations", json=evaluation),
    }


def listed(client: httpx.Client, path: str) -> list[dict[str, Any]]:
    return client.get(path).raise_for_status().json()["data"]


def test_queueing_writes_answer_503_while_the_broker_is_down_and_succeed_once_it_is_back(
    api: ApiServer, broker: OwnRedis
) -> None:
    with httpx.Client(base_url=api.url, timeout=60) as client:
        training_file = upload(client).raise_for_status().json()["id"]
        with outage(api, broker, "broker"):  # back on the same port, empty
            refused = queue_writes(client, training_file)
            for response in refused.values():
                assert_unavailable(response, "broker_unavailable")
            # Nothing was created that could run later behind the client's back.
            assert listed(client, "/v1/fine_tuning/jobs") == listed(client, "/v1/evaluations") == []
            assert client.get("/v1/models/outage-model").status_code == 404

        accepted = queue_writes(client, training_file)
        assert {name: r.status_code for name, r in accepted.items()} == dict.fromkeys(accepted, 200)
        # The 503 was not remembered under the job's key: the retry created the job, and only once.
        assert create_job(client, training_file).json() == accepted["job"].json()
        assert [j["id"] for j in listed(client, "/v1/fine_tuning/jobs")] == [accepted["job"].json()["id"]]
    # Each accepted write was really sent to the workers: one message each, in the reconnected broker.
    assert redis.Redis.from_url(broker.url).llen(QUEUE) == len(accepted)


def test_file_writes_and_reads_answer_503_while_storage_is_down_and_succeed_once_it_is_back(
    api: ApiServer, s3: OwnS3
) -> None:
    with httpx.Client(base_url=api.url, timeout=60) as client:
        stored = upload(client).raise_for_status().json()["id"]
        with outage(api, s3, "storage"):  # back on the same port, the objects kept
            assert_unavailable(upload(client, key="file-once"), "storage_unavailable")
            assert_unavailable(client.get(f"/v1/files/{stored}/content"), "storage_unavailable")
            assert [f["id"] for f in listed(client, "/v1/files")] == [stored]  # no row for the refused upload

        retried = upload(client, key="file-once")
        assert retried.status_code == 200, retried.text
        assert upload(client, key="file-once").json() == retried.json()
        assert len(listed(client, "/v1/files")) == 2
        assert client.get(f"/v1/files/{retried.json()['id']}/content").content == FILE_BODY
        assert client.get(f"/v1/files/{stored}/content").content == FILE_BODY
