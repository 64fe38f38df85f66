"""Recovers jobs and evaluations whose worker vanished, and those whose queue message was lost.

Runs in every worker (a daemon thread), so it is written to be run concurrently: each row is changed
only under a guarded UPDATE that re-checks the condition and locks the row.
"""

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import now, session_scope
from app.evaluations import lifecycle as evaluation_lifecycle
from app.evaluations.models import Evaluation, EvaluationStatus
from app.jobs.lifecycle import JobStatus, record_event, transition
from app.jobs.models import Job, JobEvent
from app.queue import BrokerUnavailable, enqueue_evaluation, enqueue_job, prune_processed_messages
from app.settings import Settings
from worker.lease import QUEUED, RUNNING, lock_if

log = logging.getLogger(__name__)

Enqueue = Callable[..., None]
# A queued row nobody took is sent again after lease_seconds, then after twice that, and so on: a
# backlog behind one long job costs a few duplicate (no-op) messages, not one a minute.
MAX_RESEND_DOUBLINGS = 6
RESEND_REASON = "resent"
PROCESSED_MESSAGE_MAX_AGE_S = 24 * 3600


@dataclass(frozen=True)
class Kind:
    """What the reaper needs to know about one kind of leased row."""

    model: type[Job] | type[Evaluation]
    # Requeue, fail or cancel a locked row whose lease expired; returns its new status.
    recover: Callable[[Session, Any, Settings], str]
    # When the queued row was last sent to the queue, and how many resends since it was (re)queued.
    resend_clock: Callable[[Session, Any], tuple[int, int]]
    mark_resent: Callable[[Session, Any, int], None]


def _lost_every_attempt(attempts: int) -> dict[str, str]:
    return {"code": "max_attempts_exceeded", "message": f"the worker was lost during each of {attempts} attempts"}


def _recover_job(session: Session, job: Job, settings: Settings) -> str:
    if job.cancel_requested:
        transition(session, job, JobStatus.CANCELLED, message="Worker lost; job cancelled as requested")
    elif job.attempts >= settings.max_attempts:
        error = _lost_every_attempt(job.attempts)
        transition(session, job, JobStatus.FAILED, message=f"Job failed: {error['message']}", error=error)
    else:
        transition(
            session,
            job,
            JobStatus.QUEUED,
            message=f"Worker lost; requeued (attempt {job.attempts + 1} of {settings.max_attempts})",
            data={"attempt": job.attempts + 1},
        )
    return job.status


def _job_resend_clock(session: Session, job: Job) -> tuple[int, int]:
    recent = session.scalars(
        select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.id.desc()).limit(MAX_RESEND_DOUBLINGS + 1)
    ).all()
    resends = 0
    for event in recent:
        if (event.data or {}).get("reason") != RESEND_REASON:
            break
        resends += 1
    return (recent[0].created_at if recent else job.created_at), resends


def _mark_job_resent(session: Session, job: Job, stamp: int) -> None:
    record_event(
        session,
        job.id,
        "message",
        "No worker has taken the job yet; sent it to the queue again",
        data={"reason": RESEND_REASON},
    )


def _recover_evaluation(session: Session, evaluation: Evaluation, settings: Settings) -> str:
    if evaluation.attempts >= settings.max_attempts:
        error = _lost_every_attempt(evaluation.attempts)
        evaluation_lifecycle.transition(evaluation, EvaluationStatus.FAILED, error=error)
    else:
        evaluation_lifecycle.transition(evaluation, EvaluationStatus.QUEUED)
    return evaluation.status


def _mark_evaluation_resent(session: Session, evaluation: Evaluation, stamp: int) -> None:
    evaluation.queued_at = stamp
    evaluation.resends += 1


JOBS = Kind(Job, _recover_job, _job_resend_clock, _mark_job_resent)
EVALUATIONS = Kind(
    Evaluation, _recover_evaluation, lambda session, e: (e.queued_at, e.resends), _mark_evaluation_resent
)


def _recover_expired(session: Session, kind: Kind, row_id: str, stamp: int, settings: Settings) -> str | None:
    """The new status of a running row whose lease expired; None when its lease turned out not to be
    expired (renewed, or another reaper got there first)."""
    row = lock_if(session, kind.model, row_id, kind.model.status == RUNNING, kind.model.lease_expires_at < stamp)
    return None if row is None else kind.recover(session, row, settings)


def _resend_if_stale(session: Session, kind: Kind, row_id: str, stamp: int, settings: Settings) -> bool:
    """Record a resend of a queued row that waited long enough since it was queued (or last re-sent)."""
    row = lock_if(session, kind.model, row_id, kind.model.status == QUEUED)
    if row is None:
        return False
    last_sent, resends = kind.resend_clock(session, row)
    if stamp - last_sent < settings.lease_seconds * 2 ** min(resends, MAX_RESEND_DOUBLINGS):
        return False
    kind.mark_resent(session, row, stamp)
    return True


def _reap_kind(kind: Kind, stamp: int, settings: Settings, send: Callable[[str], None]) -> list[str]:
    """One pass over one kind: returns the ids it changed (requeued, failed, cancelled or re-sent)."""
    model = kind.model
    with session_scope(settings.database_url) as session:
        expired = session.scalars(select(model.id).where(model.status == RUNNING, model.lease_expires_at < stamp)).all()
        queued = session.scalars(select(model.id).where(model.status == QUEUED)).all()
    touched: list[str] = []
    to_send: list[str] = []
    for row_id in expired:
        with session_scope(settings.database_url) as session:
            status = _recover_expired(session, kind, row_id, stamp, settings)
        if status is not None:
            touched.append(row_id)
        if status == QUEUED:
            to_send.append(row_id)
    for row_id in queued:
        with session_scope(settings.database_url) as session:
            if _resend_if_stale(session, kind, row_id, stamp, settings):
                touched.append(row_id)
                to_send.append(row_id)
    for row_id in to_send:  # after commit, so the worker that takes the message finds the row queued
        try:
            send(row_id)
        except BrokerUnavailable:
            log.exception("%s: could not enqueue; will retry on the next pass", row_id)
    return touched


def reap(
    *, settings: Settings, enqueue: Enqueue = enqueue_job, enqueue_evaluation: Enqueue = enqueue_evaluation
) -> list[str]:
    """One pass: returns the ids of the jobs and evaluations it changed (requeued, failed, cancelled or
    re-sent)."""
    stamp = now()
    touched = _reap_kind(JOBS, stamp, settings, lambda job_id: enqueue(settings=settings, job_id=job_id))
    touched += _reap_kind(
        EVALUATIONS, stamp, settings, lambda eval_id: enqueue_evaluation(settings=settings, evaluation_id=eval_id)
    )
    prune_processed_messages(settings=settings, older_than_seconds=PROCESSED_MESSAGE_MAX_AGE_S)
    return touched


def start_reaper(settings: Settings, stop: threading.Event) -> threading.Thread:
    """A daemon thread reaping every reaper_interval_seconds (first pass at once) until `stop` is set."""

    def loop() -> None:
        while True:
            try:
                if changed := reap(settings=settings):
                    log.info("reaper: recovered %s", changed)
            except Exception:  # the database may be briefly unreachable; try again next interval
                log.exception("reaper pass failed")
            if stop.wait(settings.reaper_interval_seconds):
                return

    thread = threading.Thread(target=loop, name="mambaft-reaper", daemon=True)
    thread.start()
    return thread
