"""The worker's Celery app: `celery -A worker.celery_app worker --pool solo` (what `mambaft worker` runs).

Late acknowledgement and a prefetch of one keep a job's message unacknowledged until the job ends and
stop a busy worker from hoarding messages. A worker that dies is detected by the job's DB lease and
recovered by the reaper, not by broker redelivery; a redelivered duplicate is a harmless no-op.
"""

import logging
import threading
from typing import Any

from celery.signals import worker_ready, worker_shutting_down

from app.celery_config import make_celery
from app.settings import get_settings
from worker.liveness import start_liveness
from worker.reaper import start_reaper
from worker.webhook_sender import start_webhook_sender

log = logging.getLogger(__name__)

app = make_celery(get_settings())
app.conf.update(
    include=["worker.tasks"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    # CUDA cannot survive fork() after initialisation, so tasks run in the worker's own process, one
    # at a time: one worker per GPU.
    worker_pool="solo",
    worker_concurrency=1,
)

# Set on a warm shutdown (SIGTERM, first Ctrl-C): the running job checkpoints and goes back to the queue.
shutdown_requested = threading.Event()
# Stops the reaper, the webhook sender and the liveness heartbeat.
_background_stop = threading.Event()


@worker_ready.connect
def _start_background_threads(**_: Any) -> None:
    start_liveness(get_settings(), _background_stop)
    start_reaper(get_settings(), _background_stop)
    start_webhook_sender(get_settings(), _background_stop)


@worker_shutting_down.connect
def _request_shutdown(**_: Any) -> None:
    log.info("worker shutting down: the running job (if any) will checkpoint and be handed back")
    shutdown_requested.set()
    _background_stop.set()
