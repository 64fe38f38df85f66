"""Reading jobs: get, list pages, cancel, events (listed and streamed), checkpoints, adapter download."""

import io
import json
import threading
import time

import pytest
from fastapi.testclient import TestClient

from app.db import now, session_scope
from app.jobs.models import Checkpoint
from app.settings import Settings
from app.storage import storage_from_settings

from .factories import job_body, update_job


@pytest.fixture
def job_id(client: TestClient, training_file: str) -> str:
    response = client.post("/v1/fine_tuning/jobs", json=job_body(training_file))
    assert response.status_code == 200
    return response.json()["id"]


def sse_frames(client: TestClient, path: str) -> list[str]:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    return [frame for frame in response.text.split("\n\n") if frame]


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_jobs_are_listed_newest_first_page_by_page(client: TestClient, training_file: str) -> None:
    ids = [client.post("/v1/fine_tuning/jobs", json=job_body(training_file)).json()["id"] for _ in range(3)]

    first = client.get("/v1/fine_tuning/jobs", params={"limit": 2}).json()
    rest = client.get("/v1/fine_tuning/jobs", params={"limit": 2, "after": first["data"][-1]["id"]}).json()

    assert (len(first["data"]), first["has_more"]) == (2, True)
    assert (len(rest["data"]), rest["has_more"]) == (1, False)
    assert sorted(j["id"] for j in first["data"] + rest["data"]) == sorted(ids)
    assert client.get("/v1/fine_tuning/jobs", params={"after": "ftjob-nope"}).status_code == 400


def test_unknown_jobs_are_404_on_every_route(client: TestClient) -> None:
    for method, suffix in [
        ("GET", ""),
        ("POST", "/cancel"),
        ("GET", "/events"),
        ("GET", "/events?stream=true"),
        ("GET", "/checkpoints"),
        ("GET", "/adapter"),
    ]:
        response = client.request(method, f"/v1/fine_tuning/jobs/ftjob-nope{suffix}")
        assert response.status_code == 404, suffix
        assert response.json()["error"]["code"] == "job_not_found"


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_cancelling_a_queued_job_cancels_it_at_once(client: TestClient, job_id: str) -> None:
    response = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")

    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] is not None
    again = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "job_not_cancellable"


def test_cancelling_a_running_job_asks_the_worker(client: TestClient, job_id: str, settings: Settings) -> None:
    update_job(settings, job_id, status="running")

    response = client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")

    assert response.status_code == 200
    assert response.json()["status"] == "running"
    latest = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 1}).json()["data"][0]
    assert "Cancellation requested" in latest["message"]


def test_events_are_listed_newest_first_page_by_page(client: TestClient, job_id: str) -> None:
    client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    path = f"/v1/fine_tuning/jobs/{job_id}/events"

    everything = client.get(path).json()
    first = client.get(path, params={"limit": 2}).json()
    rest = client.get(path, params={"limit": 2, "after": first["data"][-1]["id"]}).json()

    messages = [e["message"] for e in everything["data"]]
    assert messages[0] == "Job cancelled before it started"
    assert messages[-1] == f"Created fine-tuning job {job_id}"
    assert everything["data"][0]["object"] == "fine_tuning.job.event"
    assert everything["data"][0]["type"] == "state"
    assert everything["data"][0]["data"] == {"from": "queued", "to": "cancelled"}
    assert first["has_more"] and not rest["has_more"]
    assert first["data"] + rest["data"] == everything["data"]


@pytest.mark.parametrize("after", ["42", "ftevent-x", "ftevent-" + "9" * 30, "ftevent--1"])
def test_a_malformed_event_cursor_is_400(client: TestClient, job_id: str, after: str) -> None:
    response = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"after": after})

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "after"


def test_the_event_stream_of_a_finished_job_replays_oldest_first_and_closes(client: TestClient, job_id: str) -> None:
    client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    listed = client.get(f"/v1/fine_tuning/jobs/{job_id}/events").json()["data"]

    frames = sse_frames(client, f"/v1/fine_tuning/jobs/{job_id}/events?stream=true")

    assert frames[-1] == "data: [DONE]"
    assert frames[:-1] == [f"id: {e['id']}\ndata: {_compact(e)}" for e in reversed(listed)]


def test_the_event_stream_resumes_after_a_given_event(client: TestClient, job_id: str) -> None:
    client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    oldest_first = list(reversed(client.get(f"/v1/fine_tuning/jobs/{job_id}/events").json()["data"]))

    frames = sse_frames(client, f"/v1/fine_tuning/jobs/{job_id}/events?stream=true&after={oldest_first[0]['id']}")

    assert [f.split("\n")[0] for f in frames[:-1]] == [f"id: {e['id']}" for e in oldest_first[1:]]


def test_the_event_stream_follows_a_live_job_until_it_ends(client: TestClient, job_id: str, settings: Settings) -> None:
    update_job(settings, job_id, status="running")
    client.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    # The worker's side: it stops the job while the client is streaming.
    worker = threading.Timer(0.3, update_job, args=(settings, job_id), kwargs={"status": "cancelled"})
    worker.start()
    started = time.monotonic()

    frames = sse_frames(client, f"/v1/fine_tuning/jobs/{job_id}/events?stream=true")

    worker.join()
    assert time.monotonic() - started >= 0.3
    assert frames[-1] == "data: [DONE]"
    assert "Cancellation requested" in frames[-2]


def test_checkpoints_are_listed_newest_first(client: TestClient, job_id: str, settings: Settings) -> None:
    with session_scope(settings.database_url) as session:
        for step in (50, 100):
            session.add(
                Checkpoint(
                    id=f"ftckpt-{step}",
                    job_id=job_id,
                    step=step,
                    created_at=now() + step,
                    storage_key=f"checkpoints/{step}",
                    metrics={"loss": 1 / step},
                )
            )

    page = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()

    assert page["has_more"] is False
    assert page["data"][0] == {
        "object": "fine_tuning.job.checkpoint",
        "id": "ftckpt-100",
        "created_at": page["data"][0]["created_at"],
        "fine_tuning_job_id": job_id,
        "step_number": 100,
        "metrics": {"loss": 0.01},
    }
    assert [c["step_number"] for c in page["data"]] == [100, 50]
    after = client.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints", params={"after": "ftckpt-100"}).json()
    assert [c["id"] for c in after["data"]] == ["ftckpt-50"]


@pytest.mark.parametrize("status", ["queued", "running", "failed", "cancelled", "succeeded"])
def test_the_adapter_is_not_ready_until_the_job_succeeded_with_one(
    client: TestClient, job_id: str, settings: Settings, status: str
) -> None:
    update_job(settings, job_id, status=status)

    response = client.get(f"/v1/fine_tuning/jobs/{job_id}/adapter")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "adapter_not_ready"


def test_a_succeeded_job_streams_its_adapter(client: TestClient, job_id: str, settings: Settings) -> None:
    archive = bytes(range(256)) * 5000
    storage_from_settings(settings).put_stream(f"adapters/{job_id}.tar.gz", io.BytesIO(archive))
    update_job(settings, job_id, status="succeeded", adapter_key=f"adapters/{job_id}.tar.gz")

    response = client.get(f"/v1/fine_tuning/jobs/{job_id}/adapter")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/gzip"
    assert response.headers["content-disposition"] == f'attachment; filename="{job_id}-adapter.tar.gz"'
    assert response.content == archive


def test_merged_weights_download_only_for_jobs_that_asked_for_them(
    client: TestClient, job_id: str, training_file: str, settings: Settings
) -> None:
    update_job(settings, job_id, status="succeeded", adapter_key="adapters/any.tar.gz")
    refused = client.get(f"/v1/fine_tuning/jobs/{job_id}/merged")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "merged_model_not_requested"

    created = client.post("/v1/fine_tuning/jobs", json=job_body(training_file, lora={"export_merged": True}))
    merged_job = created.json()["id"]
    assert created.json()["lora"]["export_merged"] is True
    assert client.get(f"/v1/fine_tuning/jobs/{merged_job}/merged").json()["error"]["code"] == "adapter_not_ready"
    archive = b"merged weights" * 1000
    storage_from_settings(settings).put_stream(f"jobs/{merged_job}/merged.tar.gz", io.BytesIO(archive))
    update_job(settings, merged_job, status="succeeded", adapter_key="adapters/any.tar.gz")

    response = client.get(f"/v1/fine_tuning/jobs/{merged_job}/merged")

    assert response.status_code == 200
    assert response.headers["content-disposition"] == f'attachment; filename="{merged_job}-merged.tar.gz"'
    assert response.content == archive


def test_a_job_stored_by_an_earlier_version_reads_with_the_defaults_for_what_it_lacks(
    client: TestClient, job_id: str, settings: Settings
) -> None:
    update_job(
        settings,
        job_id,
        lora={"r": 4, "alpha": 8, "dropout": None, "target_modules": ["in_proj"], "retired_setting": 1},
        hyperparameters={"n_epochs": 2, "batch_size": None, "max_seq_len": 64},
    )

    response = client.get(f"/v1/fine_tuning/jobs/{job_id}")

    assert response.status_code == 200, response.text
    job = response.json()
    assert job["lora"] == {
        "r": 4,
        "alpha": 8,
        "dropout": 0.0,
        "target_modules": ["in_proj"],
        "train_ssm_params": False,
        "export_merged": False,
    }
    hyperparameters = {
        "n_epochs": 2,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "max_seq_len": 64,
        "activation_recompute": False,
    }
    assert job["hyperparameters"] == job["method"]["supervised"]["hyperparameters"] == hyperparameters
    assert client.get("/v1/fine_tuning/jobs").json()["data"][0]["lora"] == job["lora"]


def test_an_adapter_missing_from_storage_is_a_clean_404(client: TestClient, job_id: str, settings: Settings) -> None:
    update_job(settings, job_id, status="succeeded", adapter_key="adapters/gone.tar.gz")

    response = client.get(f"/v1/fine_tuning/jobs/{job_id}/adapter")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "adapter_missing"


def _compact(event: dict) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)
