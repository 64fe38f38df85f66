"""The Celery configuration shared by the API (which only sends) and the worker (which consumes).

Torch-free on purpose: the API builds its Celery client from here and sends tasks by name, so it never
imports the worker's code.
"""

from pathlib import Path
from typing import Any

from celery import Celery

from app.settings import Settings

QUEUE = "mambaft"
RUN_JOB_TASK = "mambaft.run_job"
RUN_EVALUATION_TASK = "mambaft.run_evaluation"
CREATE_MODEL_TASK = "mambaft.create_model"
RUN_COMPLETION_TASK = "mambaft.run_completion"
TASKS = (RUN_JOB_TASK, RUN_EVALUATION_TASK, CREATE_MODEL_TASK, RUN_COMPLETION_TASK)
# Redis hands an unacknowledged message to another consumer after this long. Jobs run for hours and
# acknowledge late, so this stays far above any job; a worker that dies is detected by the DB lease
# and the reaper, not by redelivery (a redelivered duplicate is a no-op: the claim fails).
REDIS_VISIBILITY_TIMEOUT_S = 7 * 24 * 3600


def filesystem_folders(broker_folder: Path) -> dict[str, Path]:
    """The embedded broker's folders; API and worker use the same ones, so messages meet there."""
    return {
        "data_folder_in": broker_folder / "queue",
        "data_folder_out": broker_folder / "queue",
        # Consumed messages are renamed here: a rename within one filesystem is atomic, so two workers
        # never take the same message (the default moves them into /tmp, possibly another filesystem).
        "processed_folder": broker_folder / "processed",
        # Exchange bindings; kombu's default is a folder relative to the current directory.
        "control_folder": broker_folder / "control",
    }


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    if settings.embedded_broker:
        folders = filesystem_folders(settings.broker_folder)
        for folder in folders.values():
            folder.mkdir(parents=True, exist_ok=True)
        return {**{name: str(path) for name, path in folders.items()}, "store_processed": True, "polling_interval": 0.5}
    if settings.broker_url.startswith(("redis://", "rediss://")):
        # Bounded waits on a Redis that stops answering: the API's broker check reuses pooled connections,
        # and without a socket timeout its PING would wait forever. Above the workers' 1 s BRPOP.
        return {"visibility_timeout": REDIS_VISIBILITY_TIMEOUT_S, "socket_connect_timeout": 2, "socket_timeout": 5}
    return {}


def make_celery(settings: Settings) -> Celery:
    """A Celery app bound to the configured broker, with no result backend (results are ignored)."""
    app = Celery("mambaft", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        task_default_queue=QUEUE,
        task_routes={task: {"queue": QUEUE} for task in TASKS},
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # The filesystem transport has no broadcast channel worth polling; Redis keeps `celery inspect`.
        worker_enable_remote_control=not settings.embedded_broker,
    )
    return app
