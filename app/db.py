"""Database engine, sessions and the declarative base shared by the API and the worker."""

import hashlib
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from sqlalchemy import MetaData, create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

# Explicit constraint names so Alembic migrations are stable across SQLite and Postgres.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def now() -> int:
    """Unix seconds, the timestamp shape of the OpenAI API."""
    return int(time.time())


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


# Requests of one API process that hold a session at once (app/deps.py); the pool keeps that many
# connections open, so a request never waits to connect, plus overflow for the rest (event streams,
# probes).
REQUEST_SESSIONS = 10


@lru_cache
def get_engine(database_url: str) -> Engine:
    if database_url.startswith("sqlite"):
        engine = create_engine(database_url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            # WAL lets the API read while the worker writes; foreign keys are off by default in SQLite.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(database_url, pool_pre_ping=True, pool_size=REQUEST_SESSIONS, max_overflow=10)


@lru_cache
def get_read_engine(database_url: str) -> AsyncEngine:
    """Postgres connections for `Db.read`: the async driver, so a read needs no worker thread; each
    statement commits alone, so a read spends no round trips on BEGIN and COMMIT; and the server refuses
    any write on them, so a route that wrongly writes through `Db.read` fails loudly instead of
    committing statement by statement."""
    return create_async_engine(
        database_url,
        pool_pre_ping=True,
        pool_size=REQUEST_SESSIONS,
        max_overflow=0,  # Db's max_concurrency already caps the reads in flight at REQUEST_SESSIONS
        isolation_level="AUTOCOMMIT",
        connect_args={"options": "-c default_transaction_read_only=on"},
    )


@lru_cache
def get_sessionmaker(database_url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(database_url), expire_on_commit=False)


@contextmanager
def session_scope(database_url: str) -> Iterator[Session]:
    """One transaction: committed on success, rolled back on error."""
    session = get_sessionmaker(database_url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def lock_until_commit(session: Session, name: str) -> None:
    """Wait until no other transaction holds the lock `name`, then hold it until this one ends.

    What a transaction reads after this is not changed by another holder before it commits, so a
    count followed by an insert cannot interleave with another's.
    """
    connection = session.connection()
    if connection.dialect.name == "sqlite":
        # SQLite allows one writer at a time, so its write lock serves for every name. pysqlite opens a
        # transaction only at the first write: the reads before it would see no writer's lock at all.
        dbapi_connection = connection.connection.dbapi_connection
        if not dbapi_connection.in_transaction:  # already writing means already holding the write lock
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        return
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
