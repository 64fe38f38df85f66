"""The worker's lease on leased work (a job, an evaluation, a model build): claiming it, renewing it, and
writing only while holding it.

Every write a worker makes to its row goes through `lock`, a conditional UPDATE that both checks the
lease and locks the row (a row lock on Postgres, the write lock on SQLite) for the rest of the
transaction. A worker whose lease the reaper took away therefore can never overwrite the next attempt.
"""

import logging
import os
import socket
import threading
import uuid
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.base_models.lifecycle import MODELS
from app.db import now, session_scope
from app.evaluations.lifecycle import EVALUATIONS
from app.jobs.lifecycle import JOBS
from app.settings import Settings
from app.work.lifecycle import Lifecycle, transition
from app.work.models import LeaseStatus
from worker.background import BackgroundThread

log = logging.getLogger(__name__)

# Every kind of leased work, in the order the reaper visits them.
LEASED = (JOBS, EVALUATIONS, MODELS)


def worker_id(pid: int | None = None) -> str:
    """The "host:pid" of a worker process (this one by default): its liveness row and its leases' prefix."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def new_holder_id() -> str:
    """Unique per attempt, so a heartbeat left over from an earlier attempt can never renew this one."""
    return f"{worker_id()}:{uuid.uuid4().hex[:8]}"


def expire_leases_of(settings: Settings, worker: str) -> list[str]:
    """Expire every lease held by `worker` (a `worker_id`) known to be dead, so the next reaper pass
    recovers its work at once instead of after `lease_seconds`; returns the rows' ids."""
    expired: list[str] = []
    with session_scope(settings.database_url) as session:
        for kind in LEASED:
            table = kind.table
            held = (
                table.status == LeaseStatus.RUNNING,
                table.lease_owner.startswith(f"{worker}:", autoescape=True),
            )
            ids = session.scalars(select(kind.key).where(*held)).all()
            expired += [row_id for row_id in ids if _guarded_update(session, kind, row_id, *held, lease_expires_at=0)]
    return expired


def _guarded_update(session: Session, kind: Lifecycle, row_id: str, *conditions: Any, **values: Any) -> bool:
    statement = update(kind.table).where(kind.key == row_id, *conditions).values(**values)
    result = session.execute(statement.execution_options(synchronize_session=False))
    return result.rowcount == 1


def claim(session: Session, kind: Lifecycle, row_id: str, holder: str, *, lease_seconds: int) -> Any | None:
    """Lease a queued row to `holder`, counting an attempt, and move it to running; None if it was not
    queued (a duplicate delivery, or one cancelled or taken meanwhile)."""
    # The guarded UPDATE is the atomic claim: of two workers racing, the second waits on the row lock
    # and then finds the status no longer queued.
    table = kind.table
    taken = _guarded_update(
        session,
        kind,
        row_id,
        table.status == LeaseStatus.QUEUED,
        lease_owner=holder,
        lease_expires_at=now() + lease_seconds,
        attempts=table.attempts + 1,
    )
    if not taken:
        return None
    row = session.get(table, row_id, populate_existing=True)
    # In the claim's transaction, so a claim is never visible without its event.
    transition(
        session,
        kind,
        row,
        LeaseStatus.RUNNING,
        message=f"{kind.noun} started (attempt {row.attempts})",
        data={"attempt": row.attempts, "worker": holder},
    )
    return row


def lock_if(session: Session, kind: Lifecycle, row_id: str, *conditions: Any) -> Any | None:
    """The row, locked for the rest of this transaction, if `conditions` still hold; else None."""
    # A no-op assignment: the UPDATE is what re-checks the conditions and takes the lock, atomically.
    held = _guarded_update(session, kind, row_id, *conditions, lease_owner=kind.table.lease_owner)
    return session.get(kind.table, row_id, populate_existing=True) if held else None


def lock(session: Session, kind: Lifecycle, row_id: str, holder: str) -> Any | None:
    """The row, locked for this transaction, while `holder` still holds its lease; else None."""
    table = kind.table
    return lock_if(session, kind, row_id, table.lease_owner == holder, table.status == LeaseStatus.RUNNING)


class Heartbeat(BackgroundThread):
    """A thread renewing the lease every `heartbeat_seconds`; sets `lost` once the lease is gone."""

    def __init__(self, settings: Settings, kind: Lifecycle, row_id: str, holder: str) -> None:
        self.settings = settings
        self.kind = kind
        self.row_id = row_id
        self.holder = holder
        self.lost = threading.Event()
        super().__init__(f"heartbeat-{row_id}")

    def renew(self) -> None:
        table = self.kind.table
        with session_scope(self.settings.database_url) as session:
            renewed = _guarded_update(
                session,
                self.kind,
                self.row_id,
                table.lease_owner == self.holder,
                table.status == LeaseStatus.RUNNING,
                lease_expires_at=now() + self.settings.lease_seconds,
            )
        if not renewed:
            self.lost.set()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_seconds) and not self.lost.is_set():
            try:
                self.renew()
            except Exception:  # a database hiccup: keep trying until the lease runs out
                log.exception("%s: lease renewal failed", self.row_id)


def finish(
    settings: Settings,
    kind: Lifecycle,
    row_id: str,
    holder: str,
    target: str,
    *,
    error: dict[str, str] | None = None,
    **values: Any,
) -> bool:
    """Record an attempt's outcome (`values` such as results, or the `error` it failed with) and move the
    row to `target`, only while `holder` still holds the lease; False when it no longer does."""
    with session_scope(settings.database_url) as session:
        row = lock(session, kind, row_id, holder)
        if row is None:  # the reaper gave it to another attempt: touch nothing
            log.warning("%s %s: lease lost; leaving it to its new holder", kind.name, row_id)
            return False
        for name, value in values.items():
            setattr(row, name, value)
        message = f"{kind.noun} failed: {error['message']}" if error is not None else None
        transition(session, kind, row, target, message=message, error=error)
        return True
