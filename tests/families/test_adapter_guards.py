"""What a job says of its adapter, over HTTP on a created tiny Mamba: how many layers of each kind it reaches, and
a failure with `lora_target_not_training` when the model's forward bypasses one target's adapter (as stock
transformers' fused Mamba path does with dt_proj), instead of a job that succeeds having trained nothing there."""

import dataclasses
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.jobs.lifecycle import JobStatus
from app.settings import Settings
from families.factories import bypassing, job_body
from worker.engine.families import ENGINES
from worker.job_runner import run_job
from worker.model_creation import create_model

SHAPE = {"id": "tiny", "family": "mamba", "d_model": 32, "n_layer": 2, "d_state": 8}


def _run_job(client: TestClient, settings: Settings, model_requests: list[str], **fields: Any) -> dict[str, Any]:
    """Create the tiny model and a job on it, run the job as a worker would; the job as GET returns it."""
    assert client.post("/v1/models", json=SHAPE).status_code == 200
    create_model(settings=settings, model_uid=model_requests[0])  # what the Celery task runs
    created = client.post("/v1/fine_tuning/jobs", json=job_body(client, train_lines=16, **fields))
    assert created.status_code == 200, created.text
    run_job(settings=settings, job_id=created.json()["id"])
    return client.get(f"/v1/fine_tuning/jobs/{created.json()['id']}").json()


def _messages(client: TestClient, job_id: str) -> list[str]:
    return [e["message"] for e in client.get(f"/v1/fine_tuning/jobs/{job_id}/events?limit=100").json()["data"]]


def test_a_job_reports_the_layers_its_adapter_reaches_by_kind(
    client: TestClient, settings: Settings, model_requests: list[str]
) -> None:
    job = _run_job(client, settings, model_requests)
    assert job["status"] == JobStatus.SUCCEEDED, job["error"]
    assert job["metrics"]["adapted_layers"] == {"ssm": {"adapted": 2, "layers": 2}}
    assert "LoRA on 2/2 ssm layers" in _messages(client, job["id"])


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_target_whose_adapter_gets_no_gradient_fails_the_job_naming_it(
    precision: str,
    client: TestClient,
    settings: Settings,
    model_requests: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = ENGINES["mamba"]
    monkeypatch.setitem(
        ENGINES, "mamba", dataclasses.replace(engine, mixer_forward=bypassing("dt_proj", engine.mixer_forward))
    )
    job = _run_job(client, settings, model_requests, precision=precision)
    assert job["status"] == JobStatus.FAILED and job["error"]["code"] == "lora_target_not_training", job["error"]
    message = job["error"]["message"]
    assert "backbone.layers.*.mixer.dt_proj (lora_A, lora_B; 2 of 2 modules)" in message, message
    assert "x_proj" not in message and "in_proj" not in message  # the targets that train are not named
    assert job["fine_tuned_model"] is None
