"""The client's reading of a job's event stream (app/client/http.py) against canned server answers: what
`jobs logs --follow` and `jobs create --wait` print when a stream ends early or the key is revoked."""

import json

import httpx
import pytest

from app.client.http import Client, ClientError


def frame(event_id: int, message: str) -> str:
    return f"id: ftevent-{event_id}\ndata: {json.dumps({'id': f'ftevent-{event_id}', 'message': message})}\n\n"


def serve(answers: list[str], asked: list[httpx.Request]) -> httpx.MockTransport:
    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        return httpx.Response(200, text=answers[len(asked) - 1], headers={"Content-Type": "text/event-stream"})

    return httpx.MockTransport(answer)


def test_a_stream_that_ends_without_done_is_reopened_after_the_last_event_seen() -> None:
    # The server ends every stream within an hour; only `[DONE]` says the job is finished.
    answers = [frame(1, "Job started") + frame(2, "Step 1/2"), frame(3, "Step 2/2") + "data: [DONE]\n\n"]
    asked: list[httpx.Request] = []

    with Client("http://server", None, transport=serve(answers, asked)) as client:
        messages = [event.data["message"] for event in client.job_events("ftjob-1")]

    assert messages == ["Job started", "Step 1/2", "Step 2/2"]
    assert [request.url.params.get("after") for request in asked] == [None, "ftevent-2"]
    assert all(request.url.params["stream"] == "true" for request in asked)


def test_an_error_event_ends_the_stream_with_the_servers_message() -> None:
    error = {"error": {"message": "Invalid API key", "code": "invalid_api_key", "param": None, "type": "x"}}
    answers = [frame(1, "Job started") + f"event: error\ndata: {json.dumps(error)}\n\n"]

    with Client("http://server", "mft-revoked", transport=serve(answers, [])) as client:
        events = client.job_events("ftjob-1")
        assert next(events).data["message"] == "Job started"
        with pytest.raises(ClientError, match="Invalid API key") as raised:
            next(events)

    assert raised.value.body == error
