"""This worker process's liveness row (app/workers/models.py), renewed every `heartbeat_seconds` from
the moment it is ready to take jobs until it shuts down; `/readyz` reads it."""

import logging
import os
import socket
import threading

from sqlalchemy import delete

from app.db import now, session_scope
from app.settings import Settings
from app.workers.models import WorkerHeartbeat
from worker.lease import worker_id

log = logging.getLogger(__name__)

# Rows of workers that vanished without removing theirs (SIGKILL, lost host) are deleted after a day.
STALE_ROW_MAX_AGE_S = 24 * 3600


def beat(settings: Settings, started_at: int) -> None:
    """Record this worker as seen now, and forget workers unseen for a day."""
    stamp = now()
    with session_scope(settings.database_url) as session:
        session.merge(
            WorkerHeartbeat(
                id=worker_id(),
                hostname=socket.gethostname(),
                pid=os.getpid(),
                started_at=started_at,
                last_seen=stamp,
            )
        )
        session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.last_seen < stamp - STALE_ROW_MAX_AGE_S))


def forget(settings: Settings, worker: str) -> bool:
    """Delete the row of `worker` (a `worker_id`) that stopped; returns whether it had one, that is
    whether it ever became ready."""
    with session_scope(settings.database_url) as session:
        return session.execute(delete(WorkerHeartbeat).where(WorkerHeartbeat.id == worker)).rowcount == 1


def start_liveness(settings: Settings, stop: threading.Event) -> threading.Thread:
    """A daemon thread beating every heartbeat_seconds (first beat at once) until `stop` is set; then it
    removes this worker's row, so /readyz stops counting a worker that shut down cleanly."""
    started_at = now()

    def loop() -> None:
        while True:
            try:
                beat(settings, started_at)
            except Exception:  # the database may be briefly unreachable; beat again next interval
                log.exception("worker heartbeat failed")
            if stop.wait(settings.heartbeat_seconds):
                break
        try:
            forget(settings, worker_id())
        except Exception:  # the row then ages out of /readyz's window by itself
            log.exception("could not remove this worker's heartbeat row")

    thread = threading.Thread(target=loop, name="mambaft-liveness", daemon=True)
    thread.start()
    return thread
