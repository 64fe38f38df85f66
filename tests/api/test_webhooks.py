"""/v1/webhooks: registering endpoints, refusing bad ones, and the deliveries a state change queues."""

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings

from .factories import job_body

LOOPBACK_ALLOWED = {"webhook_allow_private_targets": True}


@pytest.mark.parametrize("settings", [LOOPBACK_ALLOWED], indirect=True)
def test_the_secret_is_shown_once_and_the_endpoint_listed_and_deleted(client: TestClient, settings: Settings) -> None:
    created = client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["secret"].startswith("whsec_") and body["events"] is None
    listed = client.get("/v1/webhooks").json()["data"]
    assert [item["id"] for item in listed] == [body["id"]]
    assert "secret" not in listed[0]

    assert client.delete(f"/v1/webhooks/{body['id']}").json() == {
        "id": body["id"],
        "object": "webhook",
        "deleted": True,
    }
    assert client.get("/v1/webhooks").json()["data"] == []
    gone = client.get(f"/v1/webhooks/{body['id']}/deliveries")
    assert (gone.status_code, gone.json()["error"]["code"]) == (404, "webhook_not_found")


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"url": "ftp://example.com/hook"}, "url", "invalid_webhook_url"),
        ({"url": "http://127.0.0.1:8000/hook"}, "url", "invalid_webhook_url"),  # loopback, not allowed by default
        ({"url": "http://10.1.2.3/hook"}, "url", "invalid_webhook_url"),
        ({"url": "http://[::1/hook"}, "url", "invalid_webhook_url"),
        ({"url": "https://8.8.8.8:99999/hook"}, "url", "invalid_webhook_url"),
        ({"url": "https://8.8.8.8/hook", "events": ["fine_tuning.job.exploded"]}, "events", "invalid_event_type"),
        ({"url": "https://8.8.8.8/hook", "events": []}, "events", "invalid_request"),
        ({}, "url", "invalid_request"),
    ],
)
def test_a_bad_endpoint_is_a_400_naming_the_field(client: TestClient, body: dict, param: str, code: str) -> None:
    response = client.post("/v1/webhooks", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["param"], error["code"]) == (param, code), error


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
@pytest.mark.parametrize("settings", [LOOPBACK_ALLOWED], indirect=True)
def test_a_state_change_queues_a_delivery_per_endpoint_taking_its_type(
    client: TestClient, make_client, training_file: str
) -> None:
    url = "http://127.0.0.1:9/hook"
    every = client.post("/v1/webhooks", json={"url": url}).json()["id"]
    only_success = client.post("/v1/webhooks", json={"url": url, "events": ["fine_tuning.job.succeeded"]}).json()["id"]
    bobs = make_client("bob").post("/v1/webhooks", json={"url": url}).json()["id"]

    job = client.post("/v1/fine_tuning/jobs", json=job_body(training_file)).json()["id"]
    assert client.post(f"/v1/fine_tuning/jobs/{job}/cancel").status_code == 200

    log = {d["event_type"]: d for d in client.get(f"/v1/webhooks/{every}/deliveries").json()["data"]}
    assert set(log) == {"fine_tuning.job.queued", "fine_tuning.job.cancelled"}
    cancelled = log["fine_tuning.job.cancelled"]
    assert (cancelled["status"], cancelled["attempts"]) == ("pending", 0)
    payload = cancelled["payload"]
    assert payload["type"] == "fine_tuning.job.cancelled" and payload["id"] == cancelled["event_id"]
    assert payload["data"]["id"] == job and payload["data"]["status"] == "cancelled"
    assert client.get(f"/v1/webhooks/{only_success}/deliveries").json()["data"] == []
    # Bob's endpoint hears nothing of Alice's job.
    assert make_client("bob").get(f"/v1/webhooks/{bobs}/deliveries").json()["data"] == []
