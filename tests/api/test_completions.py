"""POST /v1/completions and /v1/chat/completions in the API: each bad input's 400 naming its field, model
ids scoped to their owner, the per-key limit, the 503 when no worker takes a request, and the answers
(whole and streamed) and errors built from what a worker writes, here written by a stand-in.
(A real worker: tests/e2e/test_completions_sdk.py.)"""

import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.completions.models import Completion, CompletionChunk, CompletionStatus
from app.db import now, session_scope
from app.deps import get_broker
from app.settings import Settings

from .factories import job_body, update_job


@pytest.fixture
def settings(make_settings: Callable[..., Settings], database_url: str) -> Settings:
    # No worker runs in these tests: a request that passes its checks is given up on quickly.
    return make_settings(
        database_url=database_url,
        max_completion_tokens=64,
        max_concurrent_completions=2,
        completion_start_timeout_seconds=0.3,
    )


def _error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return response.json()["error"]


@pytest.mark.parametrize(
    ("path", "body", "param", "says"),
    [
        ("/v1/completions", {"prompt": "x", "n": 2}, "n", "one choice"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 65}, "max_tokens", "at most 64"),
        ("/v1/completions", {"prompt": ["a", "b"]}, "prompt", "one prompt"),
        ("/v1/completions", {"prompt": "x", "temperature": 3}, "temperature", "less than or equal to 2"),
        ("/v1/completions", {"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ("/v1/completions", {"prompt": "x", "logprobs": 2}, "logprobs", "Extra inputs"),
        ("/v1/completions", {}, "prompt", "Field required"),
        ("/v1/chat/completions", {"messages": []}, "messages", "at least 1"),
        ("/v1/chat/completions", {"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role", "'user'"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "max_tokens": 1, "max_completion_tokens": 1},
            "max_completion_tokens",
            "not both",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": 100},
            "max_completion_tokens",
            "at most 64",
        ),
    ],
)
def test_a_bad_input_gets_a_400_naming_its_field(
    client: TestClient, models: list[str], path: str, body: dict[str, Any], param: str, says: str
) -> None:
    error = _error(client.post(path, json={"model": "mamba-tiny", **body}), 400)
    assert error["param"] == param
    assert says in error["message"]
    assert error["type"] == "invalid_request_error"


def test_an_unknown_model_is_404(client: TestClient, models: list[str]) -> None:
    error = _error(client.post("/v1/completions", json={"model": "gpt-4", "prompt": "x"}), 404)
    assert (error["code"], error["param"]) == ("model_not_found", "model")


def _fine_tuned(settings: Settings, client: TestClient, training_file: str) -> str:
    job = client.post("/v1/fine_tuning/jobs", json=job_body(training_file)).json()
    model_id = f"mamba-tiny:ft-:{job['id']}"
    update_job(settings, job["id"], status="succeeded", fine_tuned_model=model_id, adapter_key="jobs/x/adapter")
    return model_id


def test_a_fine_tuned_model_is_its_owners_alone(
    settings: Settings, client: TestClient, make_client: Callable[..., TestClient], training_file: str
) -> None:
    model_id = _fine_tuned(settings, client, training_file)

    error = _error(make_client("bob").post("/v1/completions", json={"model": model_id, "prompt": "x"}), 404)
    assert error["code"] == "model_not_found"
    # Its owner's request passes every check and is queued for a worker, on the job's base.
    _error(client.post("/v1/completions", json={"model": model_id, "prompt": "x"}), 503)
    with session_scope(settings.database_url) as session:
        row = session.query(Completion).one()
        assert (row.model, row.base_model, row.job_id) == (model_id, "mamba-tiny", model_id.rpartition(":")[2])


def test_no_worker_taking_the_request_is_a_503_and_the_request_is_dropped(
    settings: Settings, client: TestClient, models: list[str]
) -> None:
    response = client.post(
        "/v1/chat/completions", json={"model": "mamba-tiny", "messages": [{"role": "user", "content": "hi"}]}
    )

    error = _error(response, 503)
    assert error["code"] == "no_worker_available"
    assert response.headers["Retry-After"]
    with session_scope(settings.database_url) as session:
        assert session.query(Completion).one().status == CompletionStatus.EXPIRED


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_requests_in_flight_are_capped_per_key(
    settings: Settings, client: TestClient, make_client: Callable[..., TestClient], models: list[str]
) -> None:
    with session_scope(settings.database_url) as session:
        for i in range(2):
            session.add(
                Completion(
                    id=f"cmpl-{i}",
                    owner="alice",
                    model="mamba-tiny",
                    base_model="mamba-tiny",
                    request={},
                    status=CompletionStatus.RUNNING,
                    created_at=now(),
                )
            )

    response = client.post("/v1/completions", json={"model": "mamba-tiny", "prompt": "x"})
    error = _error(response, 429)
    assert error["code"] == "concurrent_completions_limit_exceeded"
    assert response.headers["Retry-After"] == "1"
    # Another key's owner has slots of its own.
    assert make_client("bob").post("/v1/completions", json={"model": "mamba-tiny", "prompt": "x"}).status_code == 503


class AnsweringBroker:
    """Does at once what a worker would: writes `chunks` and `outcome` onto the request's row."""

    def __init__(self, settings: Settings, chunks: list[str], **outcome: Any) -> None:
        self.settings, self.chunks, self.outcome = settings, chunks, outcome

    def enqueue_completion(self, *, settings: Settings, completion_id: str) -> None:
        with session_scope(self.settings.database_url) as session:
            row = session.get(Completion, completion_id)
            assert row is not None
            session.add_all(CompletionChunk(completion_id=completion_id, text=text) for text in self.chunks)
            for name, value in {"prompt_tokens": 3, **self.outcome}.items():
                setattr(row, name, value)


@pytest.fixture
def answer(app: Any, settings: Settings) -> Callable[..., None]:
    def install(chunks: list[str], **outcome: Any) -> None:
        app.dependency_overrides[get_broker] = lambda: AnsweringBroker(settings, chunks, **outcome)

    return install


SUCCEEDED = {"status": CompletionStatus.SUCCEEDED, "completion_tokens": 2, "finish_reason": "stop"}
CHAT = {"model": "mamba-tiny", "messages": [{"role": "user", "content": "hi"}]}


def test_a_completion_is_the_workers_text_with_usage(client: TestClient, models: list[str], answer: Any) -> None:
    answer(["Hel", "lo"], **SUCCEEDED)

    response = client.post("/v1/completions", json={"model": "mamba-tiny", "prompt": "abc"})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"].startswith("cmpl-") and body["object"] == "text_completion" and body["model"] == "mamba-tiny"
    assert body["choices"] == [{"index": 0, "text": "Hello", "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_a_streamed_chat_opens_with_the_role_and_ends_with_the_reason(
    client: TestClient, models: list[str], answer: Any
) -> None:
    answer(["Hel", "lo"], **SUCCEEDED)

    response = client.post("/v1/chat/completions", json={**CHAT, "stream": True})

    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    frames = [line.removeprefix("data: ") for line in response.text.split("\n\n") if line]
    assert frames[-1] == "[DONE]"
    chunks = [json.loads(frame) for frame in frames[:-1]]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Hello"}
    assert chunks[-1]["choices"][0] == {
        "index": 0,
        "delta": {"role": None, "content": None},
        "logprobs": None,
        "finish_reason": "stop",
    }


def test_a_chat_too_long_for_the_worker_is_a_400_naming_messages(
    client: TestClient, models: list[str], answer: Any
) -> None:
    message = "The conversation is 9000 tokens long; this service takes at most 2048"
    answer([], status=CompletionStatus.FAILED, error={"code": "context_length_exceeded", "message": message})

    error = _error(client.post("/v1/chat/completions", json={**CHAT, "stream": True}), 400)
    assert (error["code"], error["param"], error["message"]) == ("context_length_exceeded", "messages", message)


def test_a_worker_failure_is_a_500_with_its_code(client: TestClient, models: list[str], answer: Any) -> None:
    answer([], status=CompletionStatus.FAILED, error={"code": "completion_failed", "message": "CUDA out of memory"})

    error = _error(client.post("/v1/completions", json={"model": "mamba-tiny", "prompt": "x"}), 500)
    assert (error["code"], error["type"], error["message"]) == (
        "completion_failed",
        "server_error",
        "CUDA out of memory",
    )


def test_an_unreachable_broker_is_a_503_and_frees_the_slot(
    settings: Settings, client: TestClient, models: list[str], broker: Any
) -> None:
    broker.reachable = False  # the conftest's FakeBroker

    error = _error(client.post("/v1/completions", json={"model": "mamba-tiny", "prompt": "x"}), 503)
    assert error["code"] == "broker_unavailable"
    with session_scope(settings.database_url) as session:
        assert session.query(Completion).one().status == CompletionStatus.FAILED
