"""Tenancy: another owner's objects are invisible (404, never 403) on every route and in every list."""

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from .factories import job_body


@pytest.fixture
def bob(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client("bob")


@pytest.fixture
def alices_job(client: TestClient, training_file: str) -> str:
    return client.post("/v1/fine_tuning/jobs", json=job_body(training_file)).json()["id"]


def test_another_owners_objects_are_404_everywhere(bob: TestClient, training_file: str, alices_job: str) -> None:
    requests = [
        ("GET", f"/v1/files/{training_file}", "file_not_found"),
        ("GET", f"/v1/files/{training_file}/content", "file_not_found"),
        ("DELETE", f"/v1/files/{training_file}", "file_not_found"),
        ("GET", f"/v1/fine_tuning/jobs/{alices_job}", "job_not_found"),
        ("POST", f"/v1/fine_tuning/jobs/{alices_job}/cancel", "job_not_found"),
        ("GET", f"/v1/fine_tuning/jobs/{alices_job}/events", "job_not_found"),
        ("GET", f"/v1/fine_tuning/jobs/{alices_job}/events?stream=true", "job_not_found"),
        ("GET", f"/v1/fine_tuning/jobs/{alices_job}/checkpoints", "job_not_found"),
        ("GET", f"/v1/fine_tuning/jobs/{alices_job}/adapter", "job_not_found"),
    ]
    for method, path, code in requests:
        response = bob.request(method, path)
        assert (response.status_code, response.json()["error"]["code"]) == (404, code), path


def test_lists_hold_only_the_callers_objects(
    client: TestClient, bob: TestClient, training_file: str, alices_job: str
) -> None:
    assert bob.get("/v1/files").json()["data"] == []
    assert bob.get("/v1/fine_tuning/jobs").json()["data"] == []
    assert [f["id"] for f in client.get("/v1/files").json()["data"]] == [training_file]
    assert [j["id"] for j in client.get("/v1/fine_tuning/jobs").json()["data"]] == [alices_job]
    # Nor can a cursor reveal that a foreign id exists.
    assert bob.get("/v1/fine_tuning/jobs", params={"after": alices_job}).status_code == 400
    assert bob.get("/v1/files", params={"after": training_file}).status_code == 400


def test_another_owners_file_cannot_train(bob: TestClient, training_file: str) -> None:
    response = bob.post("/v1/fine_tuning/jobs", json=job_body(training_file))

    assert response.status_code == 404
    assert (response.json()["error"]["code"], response.json()["error"]["param"]) == ("file_not_found", "training_file")


def test_idempotency_keys_are_per_owner(client: TestClient, bob: TestClient, training_file: str) -> None:
    bobs_file = bob.post(
        "/v1/files", files={"file": ("b.jsonl", b'{"text": "b"}\n')}, data={"purpose": "fine-tune"}
    ).json()["id"]
    headers = {"Idempotency-Key": "shared"}

    alice = client.post("/v1/fine_tuning/jobs", json=job_body(training_file), headers=headers)
    bobs = bob.post("/v1/fine_tuning/jobs", json=job_body(bobs_file), headers=headers)

    assert (alice.status_code, bobs.status_code) == (200, 200)
    assert alice.json()["id"] != bobs.json()["id"]
