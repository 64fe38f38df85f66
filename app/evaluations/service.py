"""Evaluations: validate and queue, read; and the stability report a worker stores for each trained job."""

import json
from collections.abc import Iterator

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.base_models.service import get_model, require_ready
from app.db import new_id, now
from app.downloads import open_object
from app.errors import ApiError, conflict, not_found
from app.evaluations.lifecycle import EVALUATIONS
from app.evaluations.models import Evaluation, EvaluationStatus
from app.evaluations.schemas import EvaluationCreate, EvaluationObject
from app.evaluations.shipped_tasks import shipped_task
from app.files.service import get_file
from app.jobs.keys import stability_key
from app.jobs.lifecycle import JobStatus
from app.jobs.models import Job
from app.jobs.service import get_job
from app.pagination import Page, newest_first
from app.queue import Broker
from app.settings import Settings
from app.storage import ObjectNotFound, ObjectStorage
from app.work.dispatch import commit_then_send, require_broker


def create_evaluation(
    *, session: Session, settings: Settings, broker: Broker, owner: str, request: EvaluationCreate
) -> EvaluationObject:
    """Validate the request, commit the evaluation as queued, then send it to the workers."""
    model = request.model
    if request.fine_tuning_job is not None:
        job = _succeeded_job(session=session, owner=owner, job_id=request.fine_tuning_job)
        model = job.model
    else:
        require_ready(get_model(session=session, settings=settings, owner=owner, model_id=model))
    for task in request.tasks:
        if shipped_task(task) is None and get_file(session=session, owner=owner, file_id=task) is None:
            raise not_found(
                "task_not_found", f"{task!r} is neither a shipped task nor one of your files", param="tasks"
            )
    if (
        request.validation_file is not None
        and get_file(session=session, owner=owner, file_id=request.validation_file) is None
    ):
        raise not_found("file_not_found", f"No file with id {request.validation_file!r}", param="validation_file")
    if request.reference_evaluation is not None:
        _succeeded_reference(session=session, owner=owner, evaluation_id=request.reference_evaluation)
    require_broker(broker=broker, settings=settings)
    evaluation = Evaluation(
        id=new_id("eval"),
        owner=owner,
        model=model,
        fine_tuning_job=request.fine_tuning_job,
        tasks=list(dict.fromkeys(request.tasks)),
        shots=sorted(set(request.shots)),
        precision=request.precision,
        validation_file=request.validation_file,
        reference_evaluation=request.reference_evaluation,
        limit=request.limit,
        seed=request.seed,
        status=EvaluationStatus.QUEUED,
        created_at=now(),
    )
    session.add(evaluation)
    commit_then_send(session=session, broker=broker, settings=settings, lifecycle=EVALUATIONS, row_id=evaluation.id)
    return EvaluationObject.of(evaluation)


def _succeeded_job(*, session: Session, owner: str, job_id: str) -> Job:
    job = get_job(session=session, owner=owner, job_id=job_id)
    if job is None:
        raise not_found("job_not_found", f"No fine-tuning job with id {job_id!r}", param="fine_tuning_job")
    if job.status != JobStatus.SUCCEEDED or job.adapter_key is None:
        raise conflict(
            "job_not_succeeded",
            f"Job {job_id} is {job.status}; only a succeeded job can be evaluated",
            param="fine_tuning_job",
        )
    return job


def _succeeded_reference(*, session: Session, owner: str, evaluation_id: str) -> None:
    reference = get_evaluation(session=session, owner=owner, evaluation_id=evaluation_id)
    if reference is None:
        raise not_found(
            "evaluation_not_found", f"No evaluation with id {evaluation_id!r}", param="reference_evaluation"
        )
    if reference.status != EvaluationStatus.SUCCEEDED:
        raise conflict(
            "reference_not_succeeded",
            f"The reference evaluation {evaluation_id} is {reference.status}; it must have succeeded",
            param="reference_evaluation",
        )


def get_evaluation(*, session: Session, owner: str, evaluation_id: str) -> Evaluation | None:
    """The owner's evaluation with this id, or None."""
    statement = select(Evaluation).where(Evaluation.id == evaluation_id, Evaluation.owner == owner)
    return session.scalars(statement).one_or_none()


def list_evaluations(*, session: Session, owner: str, after: str | None, limit: int) -> Page[Evaluation]:
    """The owner's evaluations, newest first."""
    statement = select(Evaluation).where(Evaluation.owner == owner)
    return newest_first(session=session, statement=statement, entity=Evaluation, after=after, limit=limit)


def stability_report(*, storage: ObjectStorage, job: Job, suffix: str) -> Iterator[bytes]:
    """The bytes of the job's stored stability report (`json` or `png`); when it is missing, the reason the
    worker stored (a succeeded job has either)."""
    if job.status != JobStatus.SUCCEEDED:
        raise conflict(
            "stability_not_ready",
            f"Job {job.id} is {job.status}; the stability report is made after training succeeds",
            param="fine_tuning_job_id",
        )
    absent = not_found("stability_not_found", f"Job {job.id} has no stability report")
    try:
        return open_object(storage=storage, key=stability_key(job.id, suffix), missing=absent)
    except ApiError as error:
        if error is not absent:
            raise
        raise _stability_failure(storage=storage, job=job) or absent from None


def _stability_failure(*, storage: ObjectStorage, job: Job) -> ApiError | None:
    """The reason the worker stored when it could not make the job's report, as the error to answer."""
    try:
        failure = json.loads(b"".join(storage.iter_bytes(stability_key(job.id, "error.json"))))
    except ObjectNotFound:
        return None
    message = f"The stability report of job {job.id} could not be made: {failure['message']}"
    return not_found("stability_failed", message)
