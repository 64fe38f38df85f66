"""The worker's side of a completion request, without Celery: it claims a queued request once, writes
the text and usage, refuses an over-long prompt with a code the API turns into a 400, and skips a
request the API already gave up on; the reaper deletes finished ones past their retention."""

from typing import Any

import pytest
from sqlalchemy import select

from app.completions.models import Completion, CompletionChunk, CompletionStatus
from app.db import new_id, now, session_scope
from app.settings import Settings
from worker.inference.loaded_models import LoadedModels
from worker.inference.runner import run_completion
from worker.reaper import reap

REQUEST = {"max_tokens": 6, "temperature": 0, "top_p": 1, "stop": [], "seed": None}


@pytest.fixture(scope="module")
def models() -> LoadedModels:
    return LoadedModels(capacity=1, device="cpu")


def _queued(settings: Settings, *, created_at: int | None = None, **request: Any) -> str:
    completion_id = new_id("cmpl")
    with session_scope(settings.database_url) as session:
        session.add(
            Completion(
                id=completion_id,
                owner="tester",
                model="mamba-tiny",
                base_model="mamba-tiny",
                request={**REQUEST, **request},
                status=CompletionStatus.QUEUED,
                created_at=now() if created_at is None else created_at,
            )
        )
    return completion_id


def _outcome(settings: Settings, completion_id: str) -> tuple[Completion, str]:
    with session_scope(settings.database_url) as session:
        row = session.get(Completion, completion_id)
        assert row is not None
        chunks = session.query(CompletionChunk).filter_by(completion_id=completion_id).order_by(CompletionChunk.id)
        return row, "".join(chunk.text for chunk in chunks)


def test_a_queued_request_is_generated_once(settings: Settings, models: LoadedModels) -> None:
    completion_id = _queued(settings, prompt="reverse: abc =")

    run_completion(settings=settings, completion_id=completion_id, models=models)
    row, text = _outcome(settings, completion_id)
    assert (row.status, row.prompt_tokens, row.completion_tokens) == ("succeeded", 14, 6)
    assert row.finish_reason == "length" and text

    run_completion(settings=settings, completion_id=completion_id, models=models)  # a duplicate delivery
    assert _outcome(settings, completion_id)[1] == text


def test_a_chat_is_answered_from_the_rendered_conversation(settings: Settings, models: LoadedModels) -> None:
    messages = [{"role": "user", "content": "hi"}]
    completion_id = _queued(settings, messages=messages)

    run_completion(settings=settings, completion_id=completion_id, models=models)
    row, _ = _outcome(settings, completion_id)
    assert row.status == "succeeded"
    assert row.prompt_tokens == len("user: hi\nassistant: ")


def test_an_over_long_prompt_fails_with_context_length_exceeded(settings: Settings, models: LoadedModels) -> None:
    completion_id = _queued(settings, prompt="x" * (settings.max_prompt_tokens + 1))

    run_completion(settings=settings, completion_id=completion_id, models=models)
    row, text = _outcome(settings, completion_id)
    assert (row.status, row.error["code"], text) == ("failed", "context_length_exceeded", "")
    assert str(settings.max_prompt_tokens) in row.error["message"]


def test_a_request_older_than_the_timeout_is_skipped(settings: Settings, models: LoadedModels) -> None:
    stale = now() - int(settings.completion_timeout_seconds) - 1
    completion_id = _queued(settings, created_at=stale, prompt="x")

    run_completion(settings=settings, completion_id=completion_id, models=models)
    assert _outcome(settings, completion_id)[0].status == "queued"


def test_the_reaper_forgets_finished_completions_past_their_retention(settings: Settings, models: LoadedModels) -> None:
    answered = [_queued(settings, prompt=f"reverse: {word} =") for word in ("abc", "xyz")]
    for completion_id in answered:
        run_completion(settings=settings, completion_id=completion_id, models=models)
    waiting = _queued(settings, prompt="reverse: old =", created_at=now() - 10 * settings.completion_retention_seconds)
    with session_scope(settings.database_url) as session:  # the first answer finished long ago
        session.get(Completion, answered[0]).finished_at = now() - settings.completion_retention_seconds - 1

    reap(settings=settings)

    with session_scope(settings.database_url) as session:
        left = set(session.scalars(select(Completion.id)))
        chunks_of = set(session.scalars(select(CompletionChunk.completion_id)))
    assert left == {answered[1], waiting}  # an unfinished request stays, however old
    assert chunks_of == {answered[1]}
