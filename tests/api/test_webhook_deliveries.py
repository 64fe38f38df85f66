"""The worker's webhook sender against a local receiver: signed posts, retries with backoff while the
receiver is down or failing, failed after max attempts, each delivery sent once by concurrent senders."""

import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from worker.webhook_sender import deliver_due

from .factories import job_body
from .webhook_receiver import Receiver

LOOPBACK_ALLOWED = {"webhook_allow_private_targets": True}


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture
def sender() -> Iterator[httpx.Client]:
    with httpx.Client() as client:
        yield client


def cancelled_job_with_endpoint(client: TestClient, training_file: str, url: str) -> tuple[str, str]:
    """An endpoint taking only cancellations (its secret, its id), then a job created and cancelled."""
    endpoint = client.post("/v1/webhooks", json={"url": url, "events": ["fine_tuning.job.cancelled"]}).json()
    job = client.post("/v1/fine_tuning/jobs", json=job_body(training_file)).json()["id"]
    assert client.post(f"/v1/fine_tuning/jobs/{job}/cancel").status_code == 200
    return endpoint["secret"], endpoint["id"]


def the_delivery(client: TestClient, endpoint_id: str) -> dict:
    (delivery,) = client.get(f"/v1/webhooks/{endpoint_id}/deliveries").json()["data"]
    return delivery


def until(condition: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
@pytest.mark.parametrize("settings", [LOOPBACK_ALLOWED], indirect=True)
def test_a_state_change_arrives_signed_with_its_event_id(
    client: TestClient, settings: Settings, training_file: str, receiver: Receiver, sender: httpx.Client
) -> None:
    secret, endpoint = cancelled_job_with_endpoint(client, training_file, receiver.url)

    assert len(deliver_due(settings=settings, client=sender)) == 1
    (request,) = receiver.received
    assert request.signed_by(secret)
    assert not request.signed_by("whsec_someone-else")
    event = request.json()
    assert event["type"] == "fine_tuning.job.cancelled" and event["data"]["status"] == "cancelled"
    assert request.headers["Mambaft-Event-Id"] == event["id"]
    delivery = the_delivery(client, endpoint)
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == ("succeeded", 1, 200)
    assert delivery["next_attempt_at"] is None
    # Sent once: the next pass finds nothing due.
    assert deliver_due(settings=settings, client=sender) == []
    assert len(receiver.received) == 1


@pytest.mark.parametrize("settings", [{**LOOPBACK_ALLOWED, "webhook_retry_seconds": 1}], indirect=True)
def test_a_receiver_that_is_down_then_failing_gets_the_event_on_a_retry_after_backoff(
    client: TestClient, settings: Settings, training_file: str, receiver: Receiver, sender: httpx.Client
) -> None:
    receiver.stop()  # down: nothing listens on its port
    secret, endpoint = cancelled_job_with_endpoint(client, training_file, receiver.url)

    deliver_due(settings=settings, client=sender)
    down = the_delivery(client, endpoint)
    assert (down["status"], down["attempts"], down["last_status_code"]) == ("pending", 1, None)
    assert "ConnectError" in down["last_error"]
    assert down["next_attempt_at"] - down["last_attempt_at"] == 1  # webhook_retry_seconds

    receiver.script = [500]
    receiver.start()  # back, but failing once
    assert deliver_due(settings=settings, client=sender) == []  # not due before its backoff ran out
    until(lambda: bool(deliver_due(settings=settings, client=sender)))
    failing = the_delivery(client, endpoint)
    assert (failing["status"], failing["attempts"], failing["last_status_code"]) == ("pending", 2, 500)
    assert failing["next_attempt_at"] - failing["last_attempt_at"] == 2  # doubled

    until(lambda: bool(deliver_due(settings=settings, client=sender)))
    delivered = the_delivery(client, endpoint)
    assert (delivered["status"], delivered["attempts"], delivered["last_status_code"]) == ("succeeded", 3, 200)
    assert delivered["last_error"] is None
    assert len(receiver.received) == 2 and all(request.signed_by(secret) for request in receiver.received)
    assert receiver.received[0].body == receiver.received[1].body  # the same event, re-signed


@pytest.mark.parametrize(
    "settings", [{**LOOPBACK_ALLOWED, "webhook_retry_seconds": 0, "webhook_max_attempts": 2}], indirect=True
)
def test_a_delivery_fails_after_max_attempts(
    client: TestClient, settings: Settings, training_file: str, receiver: Receiver, sender: httpx.Client
) -> None:
    receiver.script = [500] * 10
    _, endpoint = cancelled_job_with_endpoint(client, training_file, receiver.url)

    for _ in range(2):
        assert len(deliver_due(settings=settings, client=sender)) == 1
    failed = the_delivery(client, endpoint)
    assert (failed["status"], failed["attempts"], failed["last_status_code"]) == ("failed", 2, 500)
    assert failed["finished_at"] is not None and failed["next_attempt_at"] is None
    assert deliver_due(settings=settings, client=sender) == []
    assert len(receiver.received) == 2


@pytest.mark.parametrize("settings", [LOOPBACK_ALLOWED], indirect=True)
def test_a_private_target_is_refused_when_sending_too(
    client: TestClient, settings: Settings, training_file: str, receiver: Receiver, sender: httpx.Client
) -> None:
    _, endpoint = cancelled_job_with_endpoint(client, training_file, receiver.url)
    strict = settings.model_copy(update={"webhook_allow_private_targets": False, "webhook_max_attempts": 1})

    deliver_due(settings=strict, client=sender)
    refused = the_delivery(client, endpoint)
    assert refused["status"] == "failed" and "private address" in refused["last_error"]
    assert receiver.received == []


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
@pytest.mark.parametrize("settings", [LOOPBACK_ALLOWED], indirect=True)
def test_concurrent_senders_send_each_delivery_once(
    client: TestClient, settings: Settings, training_file: str, receiver: Receiver
) -> None:
    client.post("/v1/webhooks", json={"url": receiver.url})
    for _ in range(5):
        job = client.post("/v1/fine_tuning/jobs", json=job_body(training_file)).json()["id"]
        client.post(f"/v1/fine_tuning/jobs/{job}/cancel")  # queued, then cancelled: 10 deliveries

    def send() -> None:
        with httpx.Client() as own:
            deliver_due(settings=settings, client=own)

    senders = [threading.Thread(target=send) for _ in range(4)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join()
    event_ids = [request.headers["Mambaft-Event-Id"] for request in receiver.received]
    assert len(event_ids) == 10 and len(set(event_ids)) == 10
