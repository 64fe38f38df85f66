"""Recovers jobs whose worker vanished, and jobs whose queue message was lost.

Runs in every worker (a daemon thread), so it is written to be run concurrently: each job is changed
only under a guarded UPDATE that re-checks the condition and locks the row.
"""

import logging
import threading
from collections.abc import Callable

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db import now, session_scope
from app.jobs.lifecycle import JobStatus, record_event, transition
from app.jobs.models import Job, JobEvent
from app.queue import BrokerUnavailable, enqueue_job, prune_processed_messages
from app.settings import Settings

log = logging.getLogger(__name__)

Enqueue = Callable[..., None]
# A queued job nobody took is sent again after lease_seconds, then after twice that, and so on: a
# backlog behind one long job costs a few duplicate (no-op) messages, not one a minute.
MAX_RESEND_DOUBLINGS = 6
RESEND_REASON = "resent"
PROCESSED_MESSAGE_MAX_AGE_S = 24 * 3600


def _lock(session: Session, job_id: str, *conditions) -> Job | None:  # noqa: ANN002
    """The job, row-locked for this transaction, if `conditions` still hold; else None."""
    statement = update(Job).where(Job.id == job_id, *conditions).values(lease_owner=Job.lease_owner)
    result = session.execute(statement.execution_options(synchronize_session=False))
    return session.get(Job, job_id, populate_existing=True) if result.rowcount == 1 else None


def _recover_expired(session: Session, job_id: str, stamp: int, settings: Settings) -> JobStatus | None:
    """Requeue, fail or cancel one running job whose lease expired; returns its new status, or None
    when its lease turned out not to be expired (renewed, or another reaper got there first)."""
    job = _lock(session, job_id, Job.status == JobStatus.RUNNING, Job.lease_expires_at < stamp)
    if job is None:
        return None
    if job.cancel_requested:
        transition(session, job, JobStatus.CANCELLED, message="Worker lost; job cancelled as requested")
    elif job.attempts >= settings.max_attempts:
        message = f"the worker was lost during each of {job.attempts} attempts"
        transition(
            session, job, JobStatus.FAILED, message=f"Job failed: {message}",
            error={"code": "max_attempts_exceeded", "message": message},
        )  # fmt: skip
    else:
        transition(
            session, job, JobStatus.QUEUED,
            message=f"Worker lost; requeued (attempt {job.attempts + 1} of {settings.max_attempts})",
            data={"attempt": job.attempts + 1},
        )  # fmt: skip
    return JobStatus(job.status)


def _resend_due(session: Session, job: Job, stamp: int, settings: Settings) -> bool:
    """Whether a queued job has waited long enough since it was queued (or last re-sent)."""
    recent = session.scalars(
        select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id.desc()).limit(MAX_RESEND_DOUBLINGS + 1)
    ).all()
    last_touched = recent[0].created_at if recent else job.created_at
    resends = 0
    for event in recent:
        if (event.data or {}).get("reason") != RESEND_REASON:
            break
        resends += 1
    return stamp - last_touched >= settings.lease_seconds * 2 ** min(resends, MAX_RESEND_DOUBLINGS)


def _resend_if_stale(session: Session, job_id: str, stamp: int, settings: Settings) -> bool:
    job = _lock(session, job_id, Job.status == JobStatus.QUEUED)
    if job is None or not _resend_due(session, job, stamp, settings):
        return False
    record_event(
        session, job.id, "message", "No worker has taken the job yet; sent it to the queue again",
        data={"reason": RESEND_REASON},
    )  # fmt: skip
    return True


def reap(*, settings: Settings, enqueue: Enqueue = enqueue_job) -> list[str]:
    """One pass: returns the ids of the jobs it changed (requeued, failed, cancelled or re-sent)."""
    stamp = now()
    with session_scope(settings.database_url) as session:
        expired = session.scalars(
            select(Job.id).where(Job.status == JobStatus.RUNNING, Job.lease_expires_at < stamp)
        ).all()
        queued = session.scalars(select(Job.id).where(Job.status == JobStatus.QUEUED)).all()
    touched: list[str] = []
    to_send: list[str] = []
    for job_id in expired:
        with session_scope(settings.database_url) as session:
            status = _recover_expired(session, job_id, stamp, settings)
        if status is not None:
            touched.append(job_id)
        if status == JobStatus.QUEUED:
            to_send.append(job_id)
    for job_id in queued:
        with session_scope(settings.database_url) as session:
            if _resend_if_stale(session, job_id, stamp, settings):
                touched.append(job_id)
                to_send.append(job_id)
    for job_id in to_send:  # after commit, so the worker that takes the message finds the job queued
        try:
            enqueue(settings=settings, job_id=job_id)
        except BrokerUnavailable:
            log.exception("job %s: could not enqueue; will retry on the next pass", job_id)
    prune_processed_messages(settings=settings, older_than_seconds=PROCESSED_MESSAGE_MAX_AGE_S)
    return touched


def start_reaper(settings: Settings, stop: threading.Event) -> threading.Thread:
    """A daemon thread reaping every reaper_interval_seconds (first pass at once) until `stop` is set."""

    def loop() -> None:
        while True:
            try:
                if changed := reap(settings=settings):
                    log.info("reaper: recovered jobs %s", changed)
            except Exception:  # the database may be briefly unreachable; try again next interval
                log.exception("reaper pass failed")
            if stop.wait(settings.reaper_interval_seconds):
                return

    thread = threading.Thread(target=loop, name="mambaft-reaper", daemon=True)
    thread.start()
    return thread
