"""Celery tasks; the logic lives in worker/job_runner.py so it runs without Celery in tests."""

from celery.exceptions import Reject

from app.celery_config import CREATE_MODEL_TASK, RUN_COMPLETION_TASK, RUN_EVALUATION_TASK, RUN_JOB_TASK
from app.settings import get_settings
from worker.celery_app import app, shutdown_requested
from worker.evaluation_runner import run_evaluation
from worker.inference.loaded_models import LoadedModels
from worker.inference.runner import run_completion
from worker.job_runner import run_job
from worker.model_creation import create_model

# The models this worker process keeps loaded between completion requests: the one thing a task leaves
# behind for the next, by design (loading a model costs more than most requests).
loaded_models = LoadedModels(capacity=get_settings().completion_models_cached)


@app.task(name=RUN_JOB_TASK, ignore_result=True)
def run_job_task(job_id: str) -> None:
    if shutdown_requested.is_set():
        # A message taken while shutting down (often the job this worker just handed back) returns to
        # the queue untouched, for the next worker.
        raise Reject("worker is shutting down", requeue=True)
    run_job(settings=get_settings(), job_id=job_id, shutdown=shutdown_requested)


@app.task(name=RUN_EVALUATION_TASK, ignore_result=True)
def run_evaluation_task(evaluation_id: str) -> None:
    if shutdown_requested.is_set():  # as for jobs: back to the queue, for the next worker
        raise Reject("worker is shutting down", requeue=True)
    run_evaluation(settings=get_settings(), evaluation_id=evaluation_id)


@app.task(name=CREATE_MODEL_TASK, ignore_result=True)
def create_model_task(model_uid: str) -> None:
    create_model(settings=get_settings(), model_uid=model_uid)


@app.task(name=RUN_COMPLETION_TASK, ignore_result=True)
def run_completion_task(completion_id: str) -> None:
    # No requeue on shutdown: a client waits on this request now, and the API answers it 503 if no worker
    # takes it in time.
    run_completion(settings=get_settings(), completion_id=completion_id, models=loaded_models)
