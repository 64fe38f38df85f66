"""Celery tasks; the logic lives in worker/job_runner.py so it runs without Celery in tests."""

from celery.exceptions import Reject

from app.celery_config import RUN_JOB_TASK
from app.settings import get_settings
from worker.celery_app import app, shutdown_requested
from worker.job_runner import run_job


@app.task(name=RUN_JOB_TASK, ignore_result=True)
def run_job_task(job_id: str) -> None:
    if shutdown_requested.is_set():
        # A message taken while shutting down (often the job this worker just handed back) returns to
        # the queue untouched, for the next worker.
        raise Reject("worker is shutting down", requeue=True)
    run_job(settings=get_settings(), job_id=job_id, shutdown=shutdown_requested)
