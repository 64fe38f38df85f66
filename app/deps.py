"""Dependencies every route shares: settings, one transaction, storage, broker, the caller's identity."""

import hashlib
from collections.abc import AsyncIterator
from typing import Annotated, Protocol

from fastapi import Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.auth import service as auth_service
from app.db import REQUEST_SESSIONS, session_scope
from app.settings import Settings
from app.storage import ObjectStorage, storage_from_settings

# The owner of everything when auth is off (a loopback-only, single-user deployment).
LOCAL_OWNER = "local"


# Dependencies that do no I/O are async: FastAPI runs a plain `def` one on a worker thread, a hop there
# and back that costs CPU on every request for nothing.
async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def get_session(settings: SettingsDep) -> AsyncIterator[Session]:
    """One transaction per request, rolled back if the route raises.

    Opening the session does no I/O (it connects at its first query, on the route's thread), so it
    happens here on the event loop; only the commit or rollback and close go to a worker thread.
    """
    scope = session_scope(settings.database_url)
    session = scope.__enter__()
    try:
        yield session
    except BaseException as error:
        await run_in_threadpool(scope.__exit__, type(error), error, error.__traceback__)
        raise
    await run_in_threadpool(scope.__exit__, None, None, None)


# scope="function" commits before the response goes out, so a client that reads back what it just
# created always finds it. max_concurrency makes requests beyond REQUEST_SESSIONS wait for a session on
# the event loop: unlimited, each took a worker thread and blocked it on the connection pool, while the
# requests holding the connections waited for a free thread to finish on; under load that stalled every
# request until the pool's 30 s timeout answered 500.
SessionDep = Annotated[Session, Depends(get_session, scope="function", max_concurrency=REQUEST_SESSIONS)]


def get_storage(request: Request) -> ObjectStorage:
    """The app's object storage, built on first use so a misconfigured store fails requests, not start-up."""
    state = request.app.state
    if getattr(state, "storage", None) is None:
        state.storage = storage_from_settings(state.settings)
    return state.storage


StorageDep = Annotated[ObjectStorage, Depends(get_storage)]


class Broker(Protocol):
    """What the API needs from the queue; `app.queue` satisfies it, tests pass a fake."""

    def enqueue_job(self, *, settings: Settings, job_id: str) -> None: ...

    def ping_broker(self, *, settings: Settings) -> None: ...


def get_broker() -> Broker:
    # Imported on first use: app.queue loads Celery, which requests that never touch the queue don't need.
    from app import queue

    return queue


BrokerDep = Annotated[Broker, Depends(get_broker)]

_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer mft-...`")


def current_owner(
    request: Request,
    settings: SettingsDep,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The tenant the request acts for: the owner of its API key."""
    if settings.auth_disabled:
        return LOCAL_OWNER
    if credentials is None:
        raise auth_service.invalid_api_key("Missing API key: send `Authorization: Bearer <key>`")
    owner = auth_service.authenticate(session=session, key=credentials.credentials)
    # Counted after authentication, so a flood of bad keys cannot spend a tenant's budget.
    request.app.state.rate_limiter.check(owner)
    return owner


OwnerDep = Annotated[str, Depends(current_owner)]

IdempotencyKeyDep = Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)]


async def body_fingerprint(request: Request) -> str:
    """What makes two requests "the same" under one Idempotency-Key: method, path and exact body."""
    digest = hashlib.sha256(f"{request.method} {request.url.path}\n".encode())
    digest.update(await request.body())
    return digest.hexdigest()


FingerprintDep = Annotated[str, Depends(body_fingerprint)]
