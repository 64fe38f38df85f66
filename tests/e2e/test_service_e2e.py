"""The product, end to end: real server and worker processes, a client speaking HTTP, a downloaded
adapter loaded with plain peft, the job's webhooks received signed. Once on the embedded default
(`mambaft serve`), once in production shape (`mambaft api` + `mambaft worker` over Postgres, Redis and S3)."""

import io
import subprocess
import tarfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.webhook_receiver import Receiver
from app.db import now
from app.jobs.lifecycle import JobStatus
from app.settings import Settings
from app.storage import storage_from_settings

from .conftest import S3_BUCKET
from .factories import MAMBAFT, adapter_logits_change, clean_env, demo_slice, free_port, job_row, make_job
from .service import REAPER_INTERVAL_S, WEBHOOK_ENV, Service

WEBHOOK_TIMEOUT_S = 30


@pytest.fixture
def production(
    tmp_path: Path, models_dir: Path, postgres_url: str, redis_url: str, s3_endpoint: str
) -> Iterator[Service]:
    """`mambaft api` + `mambaft worker` over Postgres, Redis and S3, with a key made by the CLI."""
    settings = Settings(
        data_dir=tmp_path / "var",
        database_url=postgres_url,
        broker_url=redis_url,
        storage_url=f"s3://{S3_BUCKET}/{uuid.uuid4().hex}",
        s3_endpoint_url=s3_endpoint,
        models_dir=models_dir,
    )
    env = clean_env(
        MAMBAFT_DATA_DIR=str(settings.data_dir),
        MAMBAFT_DATABASE_URL=settings.database_url,
        MAMBAFT_BROKER_URL=settings.broker_url,
        MAMBAFT_STORAGE_URL=settings.storage_url,
        MAMBAFT_S3_ENDPOINT_URL=s3_endpoint,
        MAMBAFT_MODELS_DIR=str(models_dir),
        MAMBAFT_REAPER_INTERVAL_SECONDS=REAPER_INTERVAL_S,
        **WEBHOOK_ENV,
    )
    subprocess.run([MAMBAFT, "migrate"], env=env, cwd=tmp_path, check=True)
    created = subprocess.run(
        [MAMBAFT, "create-key", "--owner", "e2e"], env=env, cwd=tmp_path, check=True, capture_output=True, text=True
    )
    service = Service(url=f"http://127.0.0.1:{free_port()}", models_dir=models_dir, settings=settings, logs=[])
    service.headers = {"Authorization": f"Bearer {created.stdout.strip()}"}
    service.start(["api", "--host", "127.0.0.1", "--port", service.url.rsplit(":", 1)[1]], env, tmp_path)
    service.start(["worker"], env, tmp_path)
    yield service
    service.stop()


def _upload(client: httpx.Client, name: str, content: bytes) -> str:
    response = client.post("/v1/files", files={"file": (name, content)}, data={"purpose": "fine-tune"})
    assert response.status_code == 200, response.text
    return response.json()["id"]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


def _wait_webhook(receiver: Receiver, event_type: str, service: Service) -> None:
    deadline = time.monotonic() + WEBHOOK_TIMEOUT_S
    while event_type not in {request.json()["type"] for request in receiver.received}:
        if time.monotonic() > deadline:
            pytest.fail(f"no {event_type} webhook in {WEBHOOK_TIMEOUT_S}s\n{service.log_tail()}")
        time.sleep(0.5)


@pytest.mark.parametrize("deployment", ["embedded", "production"])
def test_fine_tune_job_end_to_end(
    deployment: str, request: pytest.FixtureRequest, tmp_path: Path, receiver: Receiver
) -> None:
    service: Service = request.getfixturevalue(deployment)
    service.wait_ready()
    # A job whose worker died on its last allowed attempt: the running worker's reaper must fail it.
    orphan = make_job(
        service.settings,
        storage_from_settings(service.settings),
        status=JobStatus.RUNNING,
        lease_owner="dead-worker",
        lease_expires_at=now() - 1,
        attempts=service.settings.max_attempts,
    )
    with httpx.Client(base_url=service.url, headers=service.headers, timeout=30) as client:
        if deployment == "production":
            assert httpx.get(f"{service.url}/v1/files").status_code == 401  # keys are required there
        webhook = client.post("/v1/webhooks", json={"url": receiver.url})
        assert webhook.status_code == 201, webhook.text
        training = _upload(client, "train.jsonl", demo_slice("train.jsonl", 240))
        validation = _upload(client, "valid.jsonl", demo_slice("valid.jsonl", 40))
        created = client.post(
            "/v1/fine_tuning/jobs",
            json={
                "model": "mamba-tiny",
                "training_file": training,
                "validation_file": validation,
                "precision": "bf16",
                "suffix": "e2e",
                "seed": 7,
                "lora": {"r": 8, "alpha": 16, "target_modules": ["in_proj", "x_proj"]},
                "hyperparameters": {"n_epochs": 1, "batch_size": 8, "max_seq_len": 128, "learning_rate": 3e-3},
            },
        )
        assert created.status_code == 200, created.text
        job_id = created.json()["id"]

        job = service.wait_terminal(client, job_id)
        assert job["status"] == "succeeded", f"{job['error']}\n{service.log_tail()}"
        # Everything a succeeded job promises is stored by then: the stability report too.
        report = client.get(f"/v1/fine_tuning/jobs/{job_id}/stability")
        assert report.status_code == 200, report.text
        assert job["fine_tuned_model"] == f"mamba-tiny:ft-e2e:{job_id}"
        assert job["progress"]["step"] == job["progress"]["total_steps"] > 0
        metrics = job["metrics"]
        assert metrics["validation_loss"] < metrics["base_validation_loss"], metrics

        events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100}).json()["data"]
        states = {(e["data"]["from"], e["data"]["to"]) for e in events if e["type"] == "state"}
        assert {("queued", "running"), ("running", "succeeded")} <= states
        progress = [e["data"] for e in events if e["type"] == "progress"]
        assert progress, events
        assert {"step", "total_steps", "loss", "learning_rate", "tokens_per_second", "eta_seconds"} <= set(progress[0])
        assert all(p["step_seconds"] > 0 for p in progress), progress

        # The worker's sender posted each state change, signed with the secret the create showed.
        _wait_webhook(receiver, "fine_tuning.job.succeeded", service)
        mine = [r for r in receiver.received if r.json()["data"]["id"] == job_id]
        assert [r.json()["type"] for r in mine if r.json()["type"] != "fine_tuning.job.queued"] == [
            "fine_tuning.job.running",
            "fine_tuning.job.succeeded",
        ]
        assert all(r.signed_by(webhook.json()["secret"]) for r in mine)

        archive = client.get(f"/v1/fine_tuning/jobs/{job_id}/adapter")
        assert archive.status_code == 200, archive.text
    adapter = tmp_path / "adapter"
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:
        tar.extractall(adapter, filter="data")  # refuses absolute paths, `..` and links
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}
    assert adapter_logits_change(service.models_dir, adapter) > 1e-4

    deadline = time.monotonic() + 30
    while (orphaned := job_row(service.settings, orphan)).status == JobStatus.RUNNING and time.monotonic() < deadline:
        time.sleep(0.5)
    assert (orphaned.status, orphaned.error["code"]) == ("failed", "max_attempts_exceeded")
