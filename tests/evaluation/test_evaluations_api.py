"""/v1/evaluations and /v1/fine_tuning/jobs/{id}/stability through the HTTP API (no worker runs here)."""

import io
import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.db import new_id, now, session_scope
from app.evaluations.models import Evaluation, EvaluationStatus
from app.jobs.keys import stability_key
from app.jobs.lifecycle import JobStatus
from app.jobs.models import Job
from app.settings import Settings
from app.storage import storage_from_settings


@pytest.fixture
def enqueued(broker: Any) -> list[str]:
    """Evaluation ids sent to the workers (the conftest's FakeBroker records them)."""
    return broker.evaluations


@pytest.fixture
def model(settings: Settings) -> str:
    assert settings.models_dir is not None
    (settings.models_dir / "mamba-tiny").mkdir(parents=True)
    (settings.models_dir / "mamba-tiny" / "config.json").write_text(json.dumps({"model_type": "mamba"}))
    return "mamba-tiny"


@pytest.fixture
def add_row(settings: Settings) -> Callable[..., str]:
    """Insert a Job or Evaluation row as the worker would have left it; returns its id."""

    def add(table: type, **fields: Any) -> str:
        with session_scope(settings.database_url) as session:
            row = table(**fields)
            session.add(row)
            return row.id

    return add


def job_fields(status: str, owner: str = "alice", **extra: Any) -> dict[str, Any]:
    return dict(
        id=new_id("ftjob"),
        owner=owner,
        model="mamba-tiny",
        training_file="file-x",
        precision="fp32",
        hyperparameters={},
        seed=0,
        status=status,
        created_at=now(),
        metrics={},
        current_step=0,
        attempts=0,
        cancel_requested=False,
        **extra,
    )


def evaluation_fields(status: str, owner: str = "alice") -> dict[str, Any]:
    return dict(
        id=new_id("eval"),
        owner=owner,
        model="mamba-tiny",
        tasks=["lookup"],
        shots=[0, 1],
        precision="fp32",
        seed=0,
        status=status,
        created_at=now(),
    )


def test_create_queues_an_evaluation_and_the_owner_reads_it(
    client: TestClient, make_client: Callable[..., TestClient], model: str, enqueued: list[str]
) -> None:
    response = client.post("/v1/evaluations", json={"model": model, "tasks": ["lookup", "arith"], "shots": [3, 0, 1]})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"].startswith("eval-") and body["object"] == "evaluation"
    assert (body["status"], body["model"], body["fine_tuning_job"]) == ("queued", model, None)
    assert (body["shots"], body["results"], body["error"], body["finished_at"]) == ([0, 1, 3], None, None, None)
    assert enqueued == [body["id"]]
    assert client.get(f"/v1/evaluations/{body['id']}").json() == body
    other = make_client("mallory").get(f"/v1/evaluations/{body['id']}")
    assert other.status_code == 404 and other.json()["error"]["code"] == "evaluation_not_found"


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"tasks": ["lookup"]}, 400, "invalid_request"),  # neither model nor job
        ({"model": "mamba-tiny", "fine_tuning_job": "ftjob-x", "tasks": ["lookup"]}, 400, "invalid_request"),
        ({"model": "mamba-tiny", "tasks": ["lookup"], "shots": [64]}, 400, "invalid_request"),
        ({"model": "mamba-tiny"}, 400, "invalid_request"),  # nothing to measure
        ({"model": "mamba-tiny", "tasks": ["lookup"], "shots": ["1"]}, 400, "invalid_request"),
        ({"model": "mamba-tiny", "tasks": ["lookup"], "shots": [True]}, 400, "invalid_request"),
        ({"model": "mamba-tiny", "tasks": ["lookup"], "limit": "5"}, 400, "invalid_request"),
        ({"model": "mamba-tiny", "tasks": ["lookup"], "seed": 1.0}, 400, "invalid_request"),
        ({"model": "nope", "tasks": ["lookup"]}, 404, "model_not_found"),
        ({"model": "mamba-tiny", "tasks": ["lookup_train"]}, 404, "task_not_found"),  # train data, not a task
        ({"model": "mamba-tiny", "tasks": ["../tasks/lookup"]}, 404, "task_not_found"),
        ({"model": "mamba-tiny", "tasks": ["lookup"], "validation_file": "file-nope"}, 404, "file_not_found"),
        ({"fine_tuning_job": "ftjob-nope", "tasks": ["lookup"]}, 404, "job_not_found"),
        (
            {"model": "mamba-tiny", "tasks": ["lookup"], "reference_evaluation": "eval-nope"},
            404,
            "evaluation_not_found",
        ),
    ],
)
def test_invalid_requests_are_refused_in_the_openai_error_shape(
    client: TestClient, model: str, enqueued: list[str], body: dict, status: int, code: str
) -> None:
    response = client.post("/v1/evaluations", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert enqueued == []


def test_jobs_and_references_must_have_succeeded_and_belong_to_the_caller(
    client: TestClient, model: str, enqueued: list[str], add_row: Callable[..., str]
) -> None:
    running = add_row(Job, **job_fields(JobStatus.RUNNING))
    foreign = add_row(Job, **job_fields(JobStatus.SUCCEEDED, owner="mallory", adapter_key="k"))
    pending = add_row(Evaluation, **evaluation_fields(EvaluationStatus.RUNNING))
    cases = [
        ({"fine_tuning_job": running, "tasks": ["lookup"]}, 409, "job_not_succeeded"),
        ({"fine_tuning_job": foreign, "tasks": ["lookup"]}, 404, "job_not_found"),
        ({"model": model, "tasks": ["lookup"], "reference_evaluation": pending}, 409, "reference_not_succeeded"),
    ]
    for body, status, code in cases:
        response = client.post("/v1/evaluations", json=body)
        assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    succeeded = add_row(Job, **job_fields(JobStatus.SUCCEEDED, adapter_key="k"))
    response = client.post("/v1/evaluations", json={"fine_tuning_job": succeeded, "tasks": ["lookup"]})
    assert response.status_code == 200 and response.json()["model"] == "mamba-tiny"


def test_a_broker_outage_fails_the_request_and_stores_nothing(
    client: TestClient, model: str, broker: Any, settings: Settings
) -> None:
    broker.reachable = False
    response = client.post("/v1/evaluations", json={"model": model, "tasks": ["lookup"]})
    assert response.status_code == 503 and response.json()["error"]["code"] == "broker_unavailable"
    with session_scope(settings.database_url) as session:
        assert session.query(Evaluation).count() == 0


def _set_status(settings: Settings, evaluation_id: str, status: EvaluationStatus) -> None:
    with session_scope(settings.database_url) as session:
        evaluation = session.get(Evaluation, evaluation_id)
        assert evaluation is not None
        evaluation.status = status


@pytest.mark.parametrize("field", ["validation_file", "tasks"])
def test_a_file_an_unfinished_evaluation_needs_cannot_be_deleted(
    client: TestClient, model: str, enqueued: list[str], settings: Settings, field: str
) -> None:
    file_id = client.post(
        "/v1/files", files={"file": ("v.jsonl", b'{"text": "abc"}\n')}, data={"purpose": "fine-tune"}
    ).json()["id"]
    named = {"validation_file": file_id} if field == "validation_file" else {"tasks": ["lookup", file_id]}
    evaluation_id = client.post("/v1/evaluations", json={"model": model, **named}).json()["id"]

    refused = []
    for status in (EvaluationStatus.QUEUED, EvaluationStatus.RUNNING):
        _set_status(settings, evaluation_id, status)
        refused.append(client.delete(f"/v1/files/{file_id}"))
    _set_status(settings, evaluation_id, EvaluationStatus.FAILED)
    allowed = client.delete(f"/v1/files/{file_id}")

    for response in refused:
        assert response.status_code == 409, response.text
        assert response.json()["error"]["code"] == "file_in_use"
        assert evaluation_id in response.json()["error"]["message"]
    assert allowed.status_code == 200
    assert client.get(f"/v1/files/{file_id}").status_code == 404


def test_stability_is_served_once_the_worker_stored_it(
    client: TestClient, settings: Settings, add_row: Callable[..., str]
) -> None:
    running = add_row(Job, **job_fields(JobStatus.RUNNING))
    done = add_row(Job, **job_fields(JobStatus.SUCCEEDED, adapter_key="k"))
    assert client.get(f"/v1/fine_tuning/jobs/{running}/stability").json()["error"]["code"] == "stability_not_ready"
    missing = client.get(f"/v1/fine_tuning/jobs/{done}/stability.png")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "stability_not_found"
    assert client.get("/v1/fine_tuning/jobs/ftjob-nope/stability").json()["error"]["code"] == "job_not_found"

    storage = storage_from_settings(settings)
    storage.put_stream(stability_key(done, "json"), io.BytesIO(b'{"fine_tuned": {"stable": true}}'))
    storage.put_stream(stability_key(done, "png"), io.BytesIO(b"\x89PNG\r\n\x1a\nrest"))
    report = client.get(f"/v1/fine_tuning/jobs/{done}/stability")
    assert report.status_code == 200 and report.json() == {"fine_tuned": {"stable": True}}
    plot = client.get(f"/v1/fine_tuning/jobs/{done}/stability.png")
    assert plot.headers["content-type"] == "image/png" and plot.content.startswith(b"\x89PNG")
