"""The worker's lease on a running job or evaluation: claiming it, renewing it, and writing only while
holding it.

Every write a worker makes to its job or evaluation goes through `lock` (`lock_held` for jobs), a
conditional UPDATE that both checks the lease and locks the row (a row lock on Postgres, the write lock
on SQLite) for the rest of the transaction. A worker whose lease the reaper took away therefore can
never overwrite the next attempt.
"""

import logging
import os
import socket
import threading
import uuid
from typing import TypeVar

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db import now, session_scope
from app.evaluations.models import Evaluation
from app.jobs.lifecycle import JobStatus, transition
from app.jobs.models import Job
from app.settings import Settings
from worker.background import BackgroundThread

log = logging.getLogger(__name__)

# What can be leased; both spell the statuses a lease moves between alike.
Leased = TypeVar("Leased", Job, Evaluation)
QUEUED = "queued"
RUNNING = "running"


def worker_id(pid: int | None = None) -> str:
    """The "host:pid" of a worker process (this one by default): its liveness row and its leases' prefix."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def new_holder_id() -> str:
    """Unique per attempt, so a heartbeat left over from an earlier attempt can never renew this one."""
    return f"{worker_id()}:{uuid.uuid4().hex[:8]}"


def expire_leases_of(settings: Settings, worker: str) -> list[str]:
    """Expire every lease held by `worker` (a `worker_id`) known to be dead, so the next reaper pass
    requeues its jobs and evaluations at once instead of after `lease_seconds`; returns their ids."""
    expired: list[str] = []
    with session_scope(settings.database_url) as session:
        for model in (Job, Evaluation):
            held = (model.status == RUNNING, model.lease_owner.startswith(f"{worker}:", autoescape=True))
            ids = session.scalars(select(model.id).where(*held)).all()
            expired += [row_id for row_id in ids if _guarded_update(session, model, row_id, *held, lease_expires_at=0)]
    return expired


def _guarded_update(session: Session, model: type[Job] | type[Evaluation], row_id: str, *conditions, **values) -> bool:
    statement = update(model).where(model.id == row_id, *conditions).values(**values)
    result = session.execute(statement.execution_options(synchronize_session=False))
    return result.rowcount == 1


def take(session: Session, model: type[Leased], row_id: str, holder: str, *, lease_seconds: int) -> Leased | None:
    """Lease a queued row to `holder`, counting an attempt; None if it was not queued (a duplicate
    delivery, or one cancelled or taken meanwhile). The caller moves it to running in this transaction."""
    # The guarded UPDATE is the atomic claim: of two workers racing, the second waits on the row lock
    # and then finds the status no longer queued.
    taken = _guarded_update(
        session,
        model,
        row_id,
        model.status == QUEUED,
        lease_owner=holder,
        lease_expires_at=now() + lease_seconds,
        attempts=model.attempts + 1,
    )
    return session.get(model, row_id, populate_existing=True) if taken else None


def claim(session: Session, job_id: str, holder: str, *, lease_seconds: int) -> Job | None:
    """Take a queued job for `holder` and move it to running; None if it was not queued."""
    job = take(session, Job, job_id, holder, lease_seconds=lease_seconds)
    if job is None:
        return None
    # In the claim's transaction, so a claim is never visible without its event.
    transition(
        session,
        job,
        JobStatus.RUNNING,
        message=f"Job started (attempt {job.attempts})",
        data={"attempt": job.attempts, "worker": holder},
    )
    return job


def lock_if(session: Session, model: type[Leased], row_id: str, *conditions) -> Leased | None:
    """The row, locked for the rest of this transaction, if `conditions` still hold; else None."""
    # A no-op assignment: the UPDATE is what re-checks the conditions and takes the lock, atomically.
    held = _guarded_update(session, model, row_id, *conditions, lease_owner=model.lease_owner)
    return session.get(model, row_id, populate_existing=True) if held else None


def lock(session: Session, model: type[Leased], row_id: str, holder: str) -> Leased | None:
    """The row, locked for this transaction, while `holder` still holds its lease; else None."""
    return lock_if(session, model, row_id, model.lease_owner == holder, model.status == RUNNING)


def lock_held(session: Session, job_id: str, holder: str) -> Job | None:
    """The job, row-locked for this transaction, while `holder` still holds its lease; else None."""
    return lock(session, Job, job_id, holder)


class Heartbeat(BackgroundThread):
    """A thread renewing the lease every `heartbeat_seconds`; sets `lost` once the lease is gone."""

    def __init__(self, settings: Settings, row_id: str, holder: str, model: type[Job] | type[Evaluation] = Job) -> None:
        self.settings = settings
        self.row_id = row_id
        self.holder = holder
        self.model = model
        self.lost = threading.Event()
        super().__init__(f"heartbeat-{row_id}")

    def renew(self) -> None:
        with session_scope(self.settings.database_url) as session:
            renewed = _guarded_update(
                session,
                self.model,
                self.row_id,
                self.model.lease_owner == self.holder,
                self.model.status == RUNNING,
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
