"""Idempotency-Key on POST /v1/files and POST /v1/fine_tuning/jobs."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

import app.idempotency
from app.settings import Settings

from .factories import TEXT, job_body, jsonl, upload
from .test_files_upload import stored_objects

both_databases = pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)


def create_job(client: TestClient, body: dict[str, Any], key: str) -> Any:
    return client.post("/v1/fine_tuning/jobs", json=body, headers={"Idempotency-Key": key})


def lose_the_race(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the next lookup miss, as if a concurrent duplicate committed just after it ran."""
    real = app.idempotency.find_response
    calls = iter([lambda **_: None])
    monkeypatch.setattr(app.idempotency, "find_response", lambda **kw: next(calls, real)(**kw))


@both_databases
def test_a_repeated_job_request_returns_the_first_job(client: TestClient, training_file: str, broker: Any) -> None:
    body = job_body(training_file, seed=1)

    first = create_job(client, body, "key-1")
    second = create_job(client, body, "key-1")

    assert second.status_code == 200
    assert second.json() == first.json()
    assert len(client.get("/v1/fine_tuning/jobs").json()["data"]) == 1
    assert broker.enqueued == [first.json()["id"]]


@both_databases
def test_a_key_reused_with_another_body_is_409(client: TestClient, training_file: str) -> None:
    create_job(client, job_body(training_file, seed=1), "key-1")

    response = create_job(client, job_body(training_file, seed=2), "key-1")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_key_reused"
    assert len(client.get("/v1/fine_tuning/jobs").json()["data"]) == 1


@both_databases
def test_concurrent_duplicates_create_one_job(
    client: TestClient, training_file: str, broker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = job_body(training_file)
    first = create_job(client, body, "key-1")
    lose_the_race(monkeypatch)

    second = create_job(client, body, "key-1")

    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert len(client.get("/v1/fine_tuning/jobs").json()["data"]) == 1
    assert broker.enqueued == [first.json()["id"]]


def test_different_keys_create_different_jobs(client: TestClient, training_file: str) -> None:
    body = job_body(training_file)

    assert create_job(client, body, "a").json()["id"] != create_job(client, body, "b").json()["id"]


def test_a_failed_request_is_not_remembered(client: TestClient, training_file: str) -> None:
    refused = create_job(client, job_body("file-nope"), "key-1")
    # The key was not used up by the failure, so the same key can go with a corrected body.
    accepted = create_job(client, job_body(training_file), "key-1")

    assert (refused.status_code, accepted.status_code) == (404, 200)


@both_databases
def test_a_repeated_upload_returns_the_first_file(client: TestClient, settings: Settings) -> None:
    content = jsonl(TEXT)

    first = upload(client, content, headers={"Idempotency-Key": "up-1"})
    second = upload(client, content, filename="renamed.jsonl", headers={"Idempotency-Key": "up-1"})
    other = upload(client, jsonl(TEXT, TEXT), headers={"Idempotency-Key": "up-1"})

    assert second.json() == first.json()
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert len(client.get("/v1/files").json()["data"]) == 1
    assert len(stored_objects(settings)) == 1


@both_databases
def test_an_upload_retried_after_its_file_was_deleted_creates_the_file_again(
    client: TestClient, settings: Settings
) -> None:
    content = jsonl(TEXT)
    first = upload(client, content, headers={"Idempotency-Key": "up-1"}).json()["id"]
    assert client.delete(f"/v1/files/{first}").status_code == 200

    again = upload(client, content, headers={"Idempotency-Key": "up-1"})
    replayed = upload(client, content, headers={"Idempotency-Key": "up-1"})

    assert again.status_code == 200
    assert again.json()["id"] != first
    assert client.get(f"/v1/files/{again.json()['id']}/content").content == content
    # The key now stands for the new file, and replays it as usual.
    assert replayed.json() == again.json()
    assert [f["id"] for f in client.get("/v1/files").json()["data"]] == [again.json()["id"]]


def test_a_concurrent_duplicate_upload_leaves_no_stray_bytes(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = upload(client, jsonl(TEXT), headers={"Idempotency-Key": "up-1"})
    lose_the_race(monkeypatch)

    second = upload(client, jsonl(TEXT), headers={"Idempotency-Key": "up-1"})

    assert second.json()["id"] == first.json()["id"]
    assert len(stored_objects(settings)) == 1


def test_an_overlong_key_is_400(client: TestClient, training_file: str) -> None:
    response = create_job(client, job_body(training_file), "k" * 256)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "Idempotency-Key"
