"""The Celery task that runs evaluations is registered under the name the API sends."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from celery.exceptions import Reject

from app.celery_config import RUN_EVALUATION_TASK
from app.settings import get_settings


@pytest.fixture
def worker_tasks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Import the worker's Celery app against a temp data dir, as `mambaft worker` would configure it."""
    monkeypatch.setenv("MAMBAFT_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_evaluation_task_is_registered_and_requeued_during_shutdown(worker_tasks: None) -> None:
    from worker import tasks
    from worker.celery_app import app, shutdown_requested

    assert RUN_EVALUATION_TASK in app.tasks and tasks.run_evaluation_task.name == RUN_EVALUATION_TASK
    shutdown_requested.set()
    try:
        with pytest.raises(Reject) as rejected:
            tasks.run_evaluation_task.run("eval-any")  # never claims: it stays queued for another worker
    finally:
        shutdown_requested.clear()
    assert rejected.value.requeue
