"""Hands jobs to the workers through the broker, by task name, so the API never imports worker code."""

import time
from pathlib import Path
from typing import Protocol

from celery import Celery
from kombu.exceptions import KombuError

from app.celery_config import (
    CREATE_MODEL_TASK,
    QUEUE,
    RUN_COMPLETION_TASK,
    RUN_EVALUATION_TASK,
    RUN_JOB_TASK,
    filesystem_folders,
    make_celery,
)
from app.settings import Settings

# A broker that is down fails the send after about this long instead of blocking the request.
SEND_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0}


class Broker(Protocol):
    """What the API and the reaper need from the queue (one send per kind of leased work, and a ping);
    this module satisfies it, tests pass a fake."""

    def enqueue_job(self, *, settings: Settings, job_id: str) -> None: ...

    def enqueue_evaluation(self, *, settings: Settings, evaluation_id: str) -> None: ...

    def enqueue_model_creation(self, *, settings: Settings, model_uid: str) -> None: ...

    def enqueue_completion(self, *, settings: Settings, completion_id: str) -> None: ...

    def ping_broker(self, *, settings: Settings) -> None: ...


class BrokerUnavailable(Exception):
    """The broker could not be reached; a queued job whose message was lost is re-sent by the reaper."""


def _unreachable(error: Exception) -> BrokerUnavailable:
    return BrokerUnavailable(f"cannot reach the broker: {error}")


# One client per broker: a Celery app keeps a pool of producer connections worth reusing.
_clients: dict[tuple[str, Path], Celery] = {}


def _celery(settings: Settings) -> Celery:
    key = (settings.broker_url, settings.broker_folder)
    if key not in _clients:
        _clients[key] = make_celery(settings)
    return _clients[key]


def _send(settings: Settings, task: str, object_id: str) -> None:
    try:
        _celery(settings).send_task(task, args=[object_id], queue=QUEUE, retry=True, retry_policy=SEND_RETRY_POLICY)
    except (KombuError, OSError) as error:
        raise _unreachable(error) from error


def enqueue_job(*, settings: Settings, job_id: str) -> None:
    """Send `mambaft.run_job(job_id)`; raises BrokerUnavailable when the broker cannot take it."""
    _send(settings, RUN_JOB_TASK, job_id)


def enqueue_evaluation(*, settings: Settings, evaluation_id: str) -> None:
    """Send `mambaft.run_evaluation(evaluation_id)`; raises BrokerUnavailable like enqueue_job."""
    _send(settings, RUN_EVALUATION_TASK, evaluation_id)


def enqueue_model_creation(*, settings: Settings, model_uid: str) -> None:
    """Send `mambaft.create_model(model_uid)`; raises BrokerUnavailable like enqueue_job."""
    _send(settings, CREATE_MODEL_TASK, model_uid)


def enqueue_completion(*, settings: Settings, completion_id: str) -> None:
    """Send `mambaft.run_completion(completion_id)`; raises BrokerUnavailable like enqueue_job."""
    _send(settings, RUN_COMPLETION_TASK, completion_id)


def ping_broker(*, settings: Settings) -> None:
    """Raise BrokerUnavailable if the broker cannot be reached (before each create, and for /readyz)."""
    # A pooled connection and one round trip (Redis: PING): a new connection per check costs as much CPU
    # as the rest of a job's creation. A pooled one whose server restarted reconnects.
    try:
        with _celery(settings).pool.acquire(block=True, timeout=2) as connection:
            transport_errors = (*connection.connection_errors, *connection.channel_errors)
            try:
                connection.ensure_connection(max_retries=1, timeout=2)
                client = getattr(connection.default_channel, "client", None)  # the filesystem broker has none
                if client is not None:
                    client.ping()
            except transport_errors as error:
                raise _unreachable(error) from error
    except (KombuError, OSError) as error:
        raise _unreachable(error) from error


def prune_processed_messages(*, settings: Settings, older_than_seconds: float) -> int:
    """Delete consumed messages of the embedded broker older than the given age; returns the count."""
    if not settings.embedded_broker:
        return 0
    cutoff = time.time() - older_than_seconds
    removed = 0
    for message in filesystem_folders(settings.broker_folder)["processed_folder"].glob("*.msg"):
        try:
            if message.stat().st_mtime < cutoff:
                message.unlink()
                removed += 1
        except FileNotFoundError:  # another worker's reaper pruned it first
            continue
    return removed
