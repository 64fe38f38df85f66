"""Dependencies every route shares: settings, storage, broker, and `Db`, which does a request's database
work, the caller's authentication first, in one call: on a worker thread (`run`) or, for Postgres reads,
on the event loop (`read`)."""

import hashlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, TypeVar

from fastapi import Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from app import queue
from app.auth import service as auth_service
from app.db import REQUEST_SESSIONS, get_read_engine, session_scope
from app.limits import RateLimiter
from app.settings import Settings
from app.storage import ObjectStorage, storage_from_settings

# The owner of everything when auth is off (a loopback-only, single-user deployment).
LOCAL_OWNER = "local"

T = TypeVar("T")


# Dependencies that do no I/O are async: FastAPI runs a plain `def` one on a worker thread, a hop there
# and back that costs CPU on every request for nothing.
async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


@dataclass(frozen=True)
class RequestContext:
    """What a request's database work is handed: its session, the caller's owner (the tenant), the settings."""

    session: Session
    owner: str
    settings: Settings


@dataclass(frozen=True)
class Db:
    """A request's database work, done for the caller's owner in one call: `read` or `run`.

    Routes are `async` and make one such call: FastAPI gives each `def` dependency and route a thread
    hop of its own, there and back, and on this API's small indexed queries the hops cost more CPU than
    the queries (bench/RESULTS.md, API load). `run` makes one hop, `read` none.
    """

    settings: Settings
    api_key: str | None  # None when auth is off
    rate_limiter: RateLimiter

    async def run(self, work: Callable[[RequestContext], T]) -> T:
        """Run `work` in one transaction on one worker thread: any blocking work, writes included."""
        return await run_in_threadpool(self._in_transaction, work)

    async def read(self, work: Callable[[RequestContext], T]) -> T:
        """Run `work`, which only reads the database, on the event loop (Postgres; SQLite: as `run`).

        `work` runs in a greenlet that yields to the loop at each query, so it must do no other blocking
        I/O (storage, broker, files: use `run`); the connection refuses writes.
        """
        if self.settings.database_url.startswith("sqlite"):
            # The sqlite3 driver has no async form, and its queries are calls into this process anyway.
            return await self.run(work)
        async with AsyncSession(get_read_engine(self.settings.database_url)) as session:
            return await session.run_sync(
                lambda sync: work(RequestContext(session=sync, owner=self._owner(sync), settings=self.settings))
            )

    def _in_transaction(self, work: Callable[[RequestContext], T]) -> T:
        with session_scope(self.settings.database_url) as session:
            return work(RequestContext(session=session, owner=self._owner(session), settings=self.settings))

    def _owner(self, session: Session) -> str:
        if self.api_key is None:
            return LOCAL_OWNER
        owner = auth_service.authenticate(session=session, key=self.api_key)
        # Counted after authentication, so a flood of bad keys cannot spend a tenant's budget.
        self.rate_limiter.check(owner)
        return owner


_bearer = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer mft-...`")


async def get_db(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> AsyncIterator[Db]:
    """The caller's `Db`. A missing key is refused here, before the request is parsed further; a wrong
    or revoked one when `Db.run` or `Db.read` looks it up, before the route's own work (so after the
    request has passed validation)."""
    if settings.auth_disabled:
        api_key = None
    elif credentials is None:
        raise auth_service.invalid_api_key("Missing API key: send `Authorization: Bearer <key>`")
    else:
        api_key = credentials.credentials
    yield Db(settings=settings, api_key=api_key, rate_limiter=request.app.state.rate_limiter)


async def check_scraper(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """GET /metrics's gate: any tenant's live key when `metrics_require_key` (and auth is on), else none."""
    if settings.metrics_require_key:
        async for db in get_db(request, settings, credentials):
            await db.run(lambda _context: None)


# max_concurrency makes requests beyond REQUEST_SESSIONS wait on the event loop, so a thread never waits
# for a pooled connection while the requests holding the connections wait for a thread.
# scope="function" ends the slot when the route returns, before a response streams.
DbDep = Annotated[Db, Depends(get_db, scope="function", max_concurrency=REQUEST_SESSIONS)]


def get_storage(request: Request) -> ObjectStorage:
    """The app's object storage, built on first use so a misconfigured store fails requests, not start-up."""
    state = request.app.state
    if getattr(state, "storage", None) is None:
        state.storage = storage_from_settings(state.settings)
    return state.storage


StorageDep = Annotated[ObjectStorage, Depends(get_storage)]


async def get_broker() -> queue.Broker:
    return queue


BrokerDep = Annotated[queue.Broker, Depends(get_broker)]

IdempotencyKeyDep = Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)]


async def body_fingerprint(request: Request) -> str:
    """What makes two requests "the same" under one Idempotency-Key: method, path and exact body."""
    digest = hashlib.sha256(f"{request.method} {request.url.path}\n".encode())
    digest.update(await request.body())
    return digest.hexdigest()


FingerprintDep = Annotated[str, Depends(body_fingerprint)]
