"""The worker's lease on a running job: claiming it, renewing it, and writing only while holding it.

Every write a worker makes to its job goes through `lock_owned`, a conditional UPDATE that both checks
the lease and locks the row (a row lock on Postgres, the write lock on SQLite) for the rest of the
transaction. A worker whose lease the reaper took away therefore can never overwrite the next attempt.
"""

import logging
import os
import socket
import threading
import uuid
from types import TracebackType

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.db import now, session_scope
from app.jobs.lifecycle import JobStatus, transition
from app.jobs.models import Job
from app.settings import Settings

log = logging.getLogger(__name__)


def new_owner_id() -> str:
    """Unique per attempt, so a heartbeat left over from an earlier attempt can never renew this one."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _guarded_update(session: Session, job_id: str, *conditions, **values) -> bool:  # noqa: ANN002, ANN003
    statement = update(Job).where(Job.id == job_id, *conditions).values(**values)
    result = session.execute(statement.execution_options(synchronize_session=False))
    return result.rowcount == 1


def claim(session: Session, job_id: str, owner: str, *, lease_seconds: int) -> Job | None:
    """Take a queued job for `owner` and move it to running; None if it was not queued (a duplicate
    delivery, or a job cancelled or taken meanwhile)."""
    # The guarded UPDATE is the atomic claim: of two workers racing, the second waits on the row lock
    # and then finds the status no longer queued. The transition (and its event) rides in the same
    # transaction, so a claim is never visible without its event.
    claimed = _guarded_update(
        session, job_id, Job.status == JobStatus.QUEUED,
        lease_owner=owner, lease_expires_at=now() + lease_seconds, attempts=Job.attempts + 1,
    )  # fmt: skip
    if not claimed:
        return None
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    transition(
        session, job, JobStatus.RUNNING,
        message=f"Job started (attempt {job.attempts})", data={"attempt": job.attempts, "worker": owner},
    )  # fmt: skip
    return job


def lock_owned(session: Session, job_id: str, owner: str) -> Job | None:
    """The job, row-locked for this transaction, while `owner` still holds its lease; else None."""
    held = _guarded_update(
        session, job_id, Job.lease_owner == owner, Job.status == JobStatus.RUNNING, lease_owner=owner
    )
    return session.get(Job, job_id, populate_existing=True) if held else None


class Heartbeat:
    """A thread renewing the lease every `heartbeat_seconds`; sets `lost` once the lease is gone."""

    def __init__(self, settings: Settings, job_id: str, owner: str) -> None:
        self.settings = settings
        self.job_id = job_id
        self.owner = owner
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def renew(self) -> None:
        with session_scope(self.settings.database_url) as session:
            renewed = _guarded_update(
                session, self.job_id, Job.lease_owner == self.owner, Job.status == JobStatus.RUNNING,
                lease_expires_at=now() + self.settings.lease_seconds,
            )  # fmt: skip
        if not renewed:
            self.lost.set()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_seconds) and not self.lost.is_set():
            try:
                self.renew()
            except Exception:  # a database hiccup: keep trying until the lease runs out
                log.exception("job %s: lease renewal failed", self.job_id)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
