"""Recovers leased work (jobs, evaluations, model builds) whose worker vanished, and queued work whose
message was lost; forgets finished completions past their retention.

Runs in every worker (a daemon thread), so it is written to be run concurrently: each row is changed
only under a guarded UPDATE that re-checks the condition and locks the row.
"""

import logging
import threading
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import queue
from app.completions.retention import prune_finished
from app.db import now, session_scope
from app.jobs.lifecycle import JOBS, JobStatus
from app.queue import Broker, prune_processed_messages
from app.settings import Settings
from app.work.dispatch import send_committed
from app.work.lifecycle import Lifecycle, mark_resent, resend_due, transition
from app.work.models import LeaseStatus
from worker.background import start_periodic
from worker.lease import LEASED, lock_if

log = logging.getLogger(__name__)

PROCESSED_MESSAGE_MAX_AGE_S = 24 * 3600


def _recover(session: Session, kind: Lifecycle, row: Any, settings: Settings) -> str:
    """Requeue, fail or (a job whose cancel was asked for) cancel a locked row whose lease expired;
    returns its new status."""
    if kind is JOBS and row.cancel_requested:  # only a job can be cancelled while it runs
        transition(session, kind, row, JobStatus.CANCELLED, message="Worker lost; job cancelled as requested")
    elif row.attempts >= settings.max_attempts:
        message = f"the worker was lost during each of {row.attempts} attempts"
        error = {"code": "max_attempts_exceeded", "message": message}
        transition(session, kind, row, kind.failed, message=f"{kind.noun} failed: {message}", error=error)
    else:
        transition(
            session,
            kind,
            row,
            LeaseStatus.QUEUED,
            message=f"Worker lost; requeued (attempt {row.attempts + 1} of {settings.max_attempts})",
            data={"attempt": row.attempts + 1},
        )
    return row.status


def _recover_expired(session: Session, kind: Lifecycle, row_id: str, stamp: int, settings: Settings) -> str | None:
    """The new status of a running row whose lease expired; None when its lease turned out not to be
    expired (renewed, or another reaper got there first)."""
    table = kind.table
    row = lock_if(session, kind, row_id, table.status == LeaseStatus.RUNNING, table.lease_expires_at < stamp)
    return None if row is None else _recover(session, kind, row, settings)


def _resend_if_stale(session: Session, kind: Lifecycle, row_id: str, stamp: int, settings: Settings) -> bool:
    """Restart the resend clock of a queued row that waited long enough since it was queued (or last
    re-sent); True when it is to be sent again."""
    row = lock_if(session, kind, row_id, kind.table.status == LeaseStatus.QUEUED)
    if row is None or not resend_due(row, stamp, settings.lease_seconds):
        return False
    mark_resent(session, kind, row, stamp)
    return True


def _reap_kind(kind: Lifecycle, stamp: int, settings: Settings, broker: Broker) -> list[str]:
    """One pass over one kind: returns the ids it changed (requeued, failed, cancelled or re-sent)."""
    table = kind.table
    with session_scope(settings.database_url) as session:
        expired = session.scalars(
            select(kind.key).where(table.status == LeaseStatus.RUNNING, table.lease_expires_at < stamp)
        ).all()
        queued = session.scalars(select(kind.key).where(table.status == LeaseStatus.QUEUED)).all()
    touched: list[str] = []
    to_send: list[str] = []
    for row_id in expired:
        with session_scope(settings.database_url) as session:
            status = _recover_expired(session, kind, row_id, stamp, settings)
        if status is not None:
            touched.append(row_id)
        if status == LeaseStatus.QUEUED:
            to_send.append(row_id)
    for row_id in queued:
        with session_scope(settings.database_url) as session:
            if _resend_if_stale(session, kind, row_id, stamp, settings):
                touched.append(row_id)
                to_send.append(row_id)
    for row_id in to_send:  # committed above, so the worker that takes the message finds the row queued
        send_committed(broker=broker, settings=settings, lifecycle=kind, row_id=row_id)
    return touched


def reap(*, settings: Settings, broker: Broker = queue) -> list[str]:
    """One pass over every kind of leased work: returns the ids it changed (requeued, failed, cancelled
    or re-sent)."""
    stamp = now()
    touched = [row_id for kind in LEASED for row_id in _reap_kind(kind, stamp, settings, broker)]
    prune_processed_messages(settings=settings, older_than_seconds=PROCESSED_MESSAGE_MAX_AGE_S)
    prune_finished(settings=settings)
    return touched


def start_reaper(settings: Settings, stop: threading.Event) -> threading.Thread:
    """A daemon thread reaping every reaper_interval_seconds (first pass at once) until `stop` is set."""

    def reap_and_log() -> None:
        if changed := reap(settings=settings):
            log.info("reaper: recovered %s", changed)

    return start_periodic("mambaft-reaper", settings.reaper_interval_seconds, reap_and_log, stop)
