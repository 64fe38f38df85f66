"""The Celery task wrapper (worker/tasks.py)."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from celery.exceptions import Reject

from app.settings import get_settings


@pytest.fixture
def worker_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Import the worker's Celery app against a temp data dir, as `mambaft worker` would configure it."""
    monkeypatch.setenv("MAMBAFT_DATA_DIR", str(tmp_path))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_message_taken_during_shutdown_goes_back_to_the_queue(worker_module: None) -> None:
    from worker import tasks
    from worker.celery_app import shutdown_requested

    shutdown_requested.set()
    try:
        with pytest.raises(Reject) as rejected:
            tasks.run_job_task.run("ftjob-any")  # never claims: the job stays queued for another worker
    finally:
        shutdown_requested.clear()
    assert rejected.value.requeue
