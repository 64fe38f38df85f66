"""The job state machine: states, allowed transitions, and the event every transition writes.

Everything that changes `Job.status` calls `transition`; nothing else assigns it.
"""

from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from app.db import now
from app.jobs.models import Job, JobEvent


class JobStatus(StrEnum):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.VALIDATING_FILES: frozenset({JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}),
    # running -> queued: the worker died (lease expired) or handed the job back on shutdown.
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class InvalidTransition(Exception):
    def __init__(self, job_id: str, current: str, target: str) -> None:
        super().__init__(f"job {job_id} cannot go from {current} to {target}")
        self.current = current
        self.target = target


def can_transition(current: str, target: JobStatus) -> bool:
    return target in ALLOWED[JobStatus(current)]


def transition(
    session: Session,
    job: Job,
    target: JobStatus,
    *,
    message: str | None = None,
    error: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Move `job` to `target`, stamp its timestamps and record a `state` event (caller commits)."""
    if not can_transition(job.status, target):
        raise InvalidTransition(job.id, job.status, target)
    previous = job.status
    job.status = target
    stamp = now()
    if target == JobStatus.RUNNING and job.started_at is None:
        job.started_at = stamp
    if target in TERMINAL:
        job.finished_at = stamp
        job.lease_owner = None
        job.lease_expires_at = None
    if target == JobStatus.QUEUED:
        job.lease_owner = None
        job.lease_expires_at = None
    if error is not None:
        job.error = error
    record_event(
        session,
        job.id,
        "state",
        message or f"Job moved from {previous} to {target}",
        data={"from": previous, "to": str(target), **(data or {})},
        level="error" if target == JobStatus.FAILED else "info",
    )


def record_event(
    session: Session,
    job_id: str,
    type_: str,
    message: str,
    *,
    data: dict[str, Any] | None = None,
    level: str = "info",
) -> JobEvent:
    event = JobEvent(job_id=job_id, created_at=now(), type=type_, message=message, data=data, level=level)
    session.add(event)
    return event
