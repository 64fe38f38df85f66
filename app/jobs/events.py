"""A job's events: paged newest first (OpenAI's order), or streamed oldest first as Server-Sent Events."""

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from sqlalchemy import Select, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.auth.service import authenticate
from app.db import session_scope
from app.errors import ApiError, invalid_request
from app.jobs.lifecycle import TERMINAL, JobStatus
from app.jobs.models import Job, JobEvent
from app.jobs.schemas import EVENT_ID_PREFIX, JobEventObject
from app.pagination import Page, take_page

POLL_SECONDS = 0.5
# How often an open stream checks that the key that opened it is still live (a revoked key's stream
# ends at the next poll after that).
KEY_CHECK_SECONDS = 2.0
# One stream lasts at most this long; a client that wants more reconnects with `after` = last id seen.
MAX_STREAM_SECONDS = 3600
BATCH = 500
DONE = "data: [DONE]\n\n"


def parse_event_id(value: str | None) -> int | None:
    """The row id inside an `ftevent-<n>` cursor; raises invalid_request for anything else."""
    if value is None:
        return None
    digits = value.removeprefix(EVENT_ID_PREFIX)
    if digits == value or not (digits.isascii() and digits.isdigit()) or len(digits) > 18:
        raise invalid_request(f"{value!r} is not an event id like 'ftevent-42'", param="after")
    return int(digits)


def _owned_events(owner: str, job_id: str) -> Select[tuple[JobEvent]]:
    return select(JobEvent).join(Job, Job.id == JobEvent.job_id).where(Job.owner == owner, JobEvent.job_id == job_id)


def list_events(*, session: Session, owner: str, job_id: str, before: int | None, limit: int) -> Page[JobEvent]:
    """The job's events newest first, older than event `before` when given."""
    statement = _owned_events(owner, job_id)
    if before is not None:
        statement = statement.where(JobEvent.id < before)
    rows = session.scalars(statement.order_by(JobEvent.id.desc()).limit(limit + 1)).all()
    return take_page(rows, limit)


@dataclass(frozen=True)
class _Poll:
    status: str | None  # None: the job is gone
    events: list[tuple[int, JobEventObject]]  # (row id, event), oldest first


def _poll(database_url: str, owner: str, job_id: str, cursor: int, api_key: str | None) -> _Poll:
    """The job's status and next events; raises invalid_api_key first if `api_key` was revoked."""
    with session_scope(database_url) as session:
        if api_key is not None:
            authenticate(session=session, key=api_key)
        # Status first: once it reads terminal, the events query that follows sees the final events too,
        # because a transition commits its event together with the status.
        status = session.scalar(select(Job.status).where(Job.id == job_id, Job.owner == owner))
        rows = session.scalars(
            _owned_events(owner, job_id).where(JobEvent.id > cursor).order_by(JobEvent.id).limit(BATCH)
        ).all()
        return _Poll(status=status, events=[(row.id, JobEventObject.of(row)) for row in rows])


async def stream_events(
    *,
    database_url: str,
    owner: str,
    job_id: str,
    after: int | None,
    api_key: str | None,
    poll_seconds: float = POLL_SECONDS,
    max_seconds: float = MAX_STREAM_SECONDS,
) -> AsyncIterator[str]:
    """SSE frames of the job's events oldest first, then `[DONE]` once the job is terminal.

    The key that opened the stream (`api_key`; None when auth is off) is checked again at least every
    KEY_CHECK_SECONDS; once it is revoked the stream ends with an `error` event carrying the 401 a new
    request would get.
    """
    cursor = after or 0
    deadline = time.monotonic() + max_seconds
    key_checked_at = time.monotonic()
    while True:
        check_key = api_key if time.monotonic() - key_checked_at >= KEY_CHECK_SECONDS else None
        try:
            poll = await run_in_threadpool(_poll, database_url, owner, job_id, cursor, check_key)
        except ApiError as error:
            yield f"event: error\ndata: {json.dumps(error.body())}\n\n"
            return
        if check_key is not None:
            key_checked_at = time.monotonic()
        for sequence, event in poll.events:
            yield f"id: {event.id}\ndata: {event.model_dump_json()}\n\n"
            cursor = sequence  # advanced with every event sent
        if len(poll.events) == BATCH:
            continue  # a backlog: drain it before sleeping
        if poll.status is None or JobStatus(poll.status) in TERMINAL:
            yield DONE
            return
        if time.monotonic() >= deadline:
            return  # no [DONE]: the client knows to reconnect
        await asyncio.sleep(poll_seconds)
