"""`Idempotency-Key` support: a retried create returns the first response instead of creating twice.

Each (owner, key) is stored with a fingerprint of the request and the response it got. Only successes
are remembered: a failed create changed nothing, so retrying it simply runs it again. Nor is an object
that was deleted since: its record goes with it (`forget_object`), so a retry creates the object anew
instead of answering with the id of one that no longer exists.
"""

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, BigInteger, Integer, String, UniqueConstraint, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column

from app.db import Base, now
from app.errors import conflict


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_keys"
    # The constraint, not a prior lookup, is what stops two concurrent duplicates.
    __table_args__ = (UniqueConstraint("owner", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(128))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The id of the object the response describes, to drop the record when that object is deleted.
    object_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)


@dataclass(frozen=True)
class Claim:
    owner: str
    key: str
    fingerprint: str


@dataclass(frozen=True)
class Outcome:
    body: dict[str, Any]
    created: bool  # False: `body` replays the response of an earlier request with the same key


def claim_for(*, owner: str, key: str | None, fingerprint: str) -> Claim | None:
    """The claim a request makes, or None when it carries no Idempotency-Key."""
    return None if key is None else Claim(owner=owner, key=key, fingerprint=fingerprint)


def fingerprint_of(*parts: str) -> str:
    """sha256 over parts that are already digests or short strings, separated so they can't run together."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def find_response(*, session: Session, claim: Claim) -> dict[str, Any] | None:
    """The response first given under this key; raises idempotency_key_reused for a different request."""
    record = session.scalars(
        select(IdempotencyRecord).where(IdempotencyRecord.owner == claim.owner, IdempotencyRecord.key == claim.key)
    ).one_or_none()
    if record is None:
        return None
    if record.fingerprint != claim.fingerprint:
        raise conflict(
            "idempotency_key_reused",
            "This Idempotency-Key was already used with a different request; use a new key",
            param="Idempotency-Key",
        )
    return record.response


def run_once(
    *,
    session: Session,
    claim: Claim | None,
    create: Callable[[], dict[str, Any]],
    undo: Callable[[], None] = lambda: None,
) -> Outcome:
    """Run `create` and commit, once per key; `undo` cleans up outside the DB when nothing is committed."""
    if claim is not None and (stored := find_response(session=session, claim=claim)) is not None:
        return Outcome(body=stored, created=False)
    # Committed here rather than at the end of the request: the caller acts on the new row (enqueues
    # it) only once it is durable, and a concurrent duplicate shows up right here as a key conflict.
    try:
        body = create()
        if claim is not None:
            session.add(
                IdempotencyRecord(
                    owner=claim.owner,
                    key=claim.key,
                    fingerprint=claim.fingerprint,
                    status_code=200,
                    response=body,
                    object_id=body["id"],
                    created_at=now(),
                )
            )
        session.commit()
    except IntegrityError:
        session.rollback()
        undo()
        stored = find_response(session=session, claim=claim) if claim is not None else None
        if stored is None:
            raise
        return Outcome(body=stored, created=False)
    except BaseException:
        undo()
        raise
    return Outcome(body=body, created=True)


def forget_object(*, session: Session, owner: str, object_id: str) -> None:
    """Drop the records whose response names `object_id`, which is being deleted in this transaction."""
    session.execute(
        delete(IdempotencyRecord).where(IdempotencyRecord.owner == owner, IdempotencyRecord.object_id == object_id)
    )
