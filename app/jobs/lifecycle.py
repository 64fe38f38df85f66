"""The job state machine: states, allowed transitions, and the event every transition writes (in the job's
own events, which the API pages and streams).

Everything that changes `Job.status` calls `transition`; nothing else assigns it.
"""

from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from app.jobs.models import Job, JobEvent
from app.work import lifecycle as work
from app.work.models import LeaseStatus


class JobStatus(StrEnum):
    VALIDATING_FILES = "validating_files"
    QUEUED = LeaseStatus.QUEUED.value
    RUNNING = LeaseStatus.RUNNING.value
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ALLOWED: dict[str, frozenset[str]] = {
    JobStatus.VALIDATING_FILES: frozenset({JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED}),
    # running -> queued: the worker died (lease expired) or handed the job back on shutdown.
    JobStatus.RUNNING: frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


# record_event(session, job_id, type_, message, *, data=None, level="info"): a job's own event.
record_event = work.events_in(JobEvent, "job_id")
JOBS = work.Lifecycle(
    name="job",
    noun="Job",
    table=Job,
    key=Job.id,
    allowed=ALLOWED,
    failed=JobStatus.FAILED,
    record_event=record_event,
    send=lambda broker, settings, job_id: broker.enqueue_job(settings=settings, job_id=job_id),
    webhook_object="fine_tuning.job",
)
TERMINAL = JOBS.terminal


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
    work.transition(session, JOBS, job, target, message=message, error=error, data=data)
