"""Answering a completion request from what its worker writes: wait until the worker has taken it and
checked its prompt, then either wait for the whole text or stream the chunks as Server-Sent Events.

Each step polls the request's row (and its chunks after a cursor) on a worker thread, as the job event
stream does; a client that goes away only stops the polling, the worker finishes on its own.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from app.completions.models import Completion, CompletionChunk, CompletionStatus
from app.completions.service import finish_unstarted
from app.db import session_scope
from app.errors import ApiError, invalid_request, unavailable
from app.settings import Settings

POLL_SECONDS = 0.1
DONE = "data: [DONE]\n\n"
# Worker failures that are the request's fault: a 400 naming the field, not a 500.
CLIENT_ERRORS = frozenset({"context_length_exceeded"})


@dataclass(frozen=True)
class Progress:
    status: CompletionStatus
    started: bool  # the worker has checked the prompt (prompt_tokens known)
    text: str  # chunks after the cursor, joined
    cursor: int
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    error: dict[str, Any] | None

    @property
    def finished(self) -> bool:
        return self.status not in (CompletionStatus.QUEUED, CompletionStatus.RUNNING)

    def usage(self) -> dict[str, int]:
        total = self.prompt_tokens + self.completion_tokens
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "total_tokens": total}


def _poll(database_url: str, completion_id: str, cursor: int) -> Progress:
    with session_scope(database_url) as session:
        # The row first: once it reads finished, the chunks query sees every chunk (the worker commits its
        # last chunk before, or with, the outcome).
        row = session.get(Completion, completion_id)
        assert row is not None
        chunks = session.execute(
            select(CompletionChunk.id, CompletionChunk.text)
            .where(CompletionChunk.completion_id == completion_id, CompletionChunk.id > cursor)
            .order_by(CompletionChunk.id)
        ).all()
        return Progress(
            status=CompletionStatus(row.status),
            started=row.prompt_tokens is not None,
            text="".join(text for _, text in chunks),
            cursor=chunks[-1][0] if chunks else cursor,
            prompt_tokens=row.prompt_tokens or 0,
            completion_tokens=row.completion_tokens or 0,
            finish_reason=row.finish_reason,
            error=row.error,
        )


def failure(completion: Completion, error: dict[str, Any] | None) -> ApiError:
    """A failed request's error as the client gets it."""
    error = error or {"code": "completion_failed", "message": "The worker failed to generate"}
    if error["code"] in CLIENT_ERRORS:
        param = "messages" if "messages" in completion.request else "prompt"
        return invalid_request(error["message"], param=param, code=error["code"])
    return ApiError(500, error["code"], error["message"], type_="server_error")


def _past_deadline(settings: Settings, completion: Completion) -> bool:
    """Past completion_timeout_seconds since the request was created (the window its slot counts in)."""
    return time.time() >= completion.created_at + settings.completion_timeout_seconds


def _timed_out(settings: Settings) -> ApiError:
    seconds = f"{settings.completion_timeout_seconds:g}"
    return ApiError(
        504, "completion_timeout", f"The completion did not finish within {seconds} s", type_="server_error"
    )


async def started(settings: Settings, completion: Completion) -> Progress:
    """The request once a worker has checked its prompt (or finished it). Raises 503 when no worker takes
    it within completion_start_timeout_seconds (the request is then dropped), the request's own error
    when it failed before generating, and 504 past completion_timeout_seconds."""
    start_deadline = time.monotonic() + settings.completion_start_timeout_seconds
    while True:
        progress = await run_in_threadpool(_poll, settings.database_url, completion.id, 0)
        if progress.status == CompletionStatus.FAILED:
            raise failure(completion, progress.error)
        if progress.started or progress.finished:
            return progress
        if progress.status == CompletionStatus.QUEUED and time.monotonic() >= start_deadline:
            seconds = f"{settings.completion_start_timeout_seconds:g}"
            message = f"No worker took the request within {seconds} s (all busy or none running); retry later"
            error = {"code": "no_worker_available", "message": message}
            expired = await run_in_threadpool(
                finish_unstarted,
                settings=settings,
                completion_id=completion.id,
                status=CompletionStatus.EXPIRED,
                error=error,
            )
            if expired:
                raise unavailable(error["code"], message)
        if _past_deadline(settings, completion):
            raise _timed_out(settings)
        await asyncio.sleep(POLL_SECONDS)


async def finished(settings: Settings, completion: Completion, first: Progress) -> Progress:
    """The whole answer: `first` (from `started`) with the rest of the text; raises the request's error,
    or 504 past completion_timeout_seconds."""
    text, progress = first.text, first
    while not progress.finished:
        if _past_deadline(settings, completion):
            raise _timed_out(settings)
        await asyncio.sleep(POLL_SECONDS)
        progress = await run_in_threadpool(_poll, settings.database_url, completion.id, progress.cursor)
        text += progress.text
    if progress.status != CompletionStatus.SUCCEEDED:
        raise failure(completion, progress.error)
    return replace(progress, text=text)


def frame(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def stream(
    settings: Settings, completion: Completion, first: Progress, chunk: Callable[[str, str | None], dict[str, Any]]
) -> AsyncIterator[str]:
    """SSE frames: `chunk(text, None)` for each new piece of text, `chunk("", finish_reason)` at the end,
    then `[DONE]`. A failure or timeout mid-stream ends it with an `error` frame (what the SDK raises)."""
    progress = first
    while True:
        if progress.text:
            yield frame(chunk(progress.text, None))
        if progress.finished:
            break
        if _past_deadline(settings, completion):
            yield frame(_timed_out(settings).body())
            return
        await asyncio.sleep(POLL_SECONDS)
        progress = await run_in_threadpool(_poll, settings.database_url, completion.id, progress.cursor)
    if progress.status != CompletionStatus.SUCCEEDED:
        yield frame(failure(completion, progress.error).body())
        return
    yield frame(chunk("", progress.finish_reason))
    yield DONE
