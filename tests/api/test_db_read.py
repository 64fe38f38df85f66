"""`Db.read`, the async read path of Postgres requests: it answers reads and refuses writes."""

import asyncio

import pytest
from sqlalchemy import select
from sqlalchemy.exc import InternalError

from app.auth.models import ApiKey
from app.auth.service import create_api_key
from app.db import session_scope
from app.deps import Db, RequestContext
from app.limits import RateLimiter
from app.settings import Settings

pytestmark = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


def _db(settings: Settings, key: str) -> Db:
    return Db(settings=settings, api_key=key, rate_limiter=RateLimiter(0))


def test_a_read_runs_for_the_keys_owner(settings: Settings) -> None:
    with session_scope(settings.database_url) as session:
        _, key = create_api_key(session=session, owner="alice")

    def owners(ctx: RequestContext) -> tuple[str, list[str]]:
        return ctx.owner, list(ctx.session.scalars(select(ApiKey.owner)))

    assert asyncio.run(_db(settings, key).read(owners)) == ("alice", ["alice"])


def test_a_write_through_read_is_refused_by_the_database(settings: Settings) -> None:
    with session_scope(settings.database_url) as session:
        _, key = create_api_key(session=session, owner="alice")

    def write(ctx: RequestContext) -> None:
        create_api_key(session=ctx.session, owner="mallory")

    with pytest.raises(InternalError, match="read-only transaction"):
        asyncio.run(_db(settings, key).read(write))
    with session_scope(settings.database_url) as session:
        assert list(session.scalars(select(ApiKey.owner))) == ["alice"]
