"""Fine-tuning jobs: create and queue, read, cancel, and hand out checkpoints and the adapter."""

import secrets
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.base_models.service import check_variant, get_model, require_ready
from app.db import new_id, now
from app.downloads import open_object
from app.errors import conflict, invalid_request, not_found
from app.files.service import FINE_TUNE, get_file
from app.idempotency import claim_for, run_once
from app.jobs.config import resolve_hyperparameters, resolve_integrations, resolve_lora
from app.jobs.keys import merged_key
from app.jobs.lifecycle import JOBS, TERMINAL, JobStatus, record_event, transition
from app.jobs.models import Checkpoint, Job
from app.jobs.schemas import JobCreate, JobObject
from app.limits import check_job_slots
from app.pagination import Page, newest_first
from app.queue import Broker
from app.settings import Settings
from app.storage import ObjectStorage
from app.work.dispatch import require_broker, send_committed

# Seeds drawn for jobs that give none: stored, so a job can be rerun exactly.
MAX_RANDOM_SEED = 2**31


def create_job(
    *,
    session: Session,
    settings: Settings,
    broker: Broker,
    owner: str,
    request: JobCreate,
    idempotency_key: str | None,
    fingerprint: str,
) -> JobObject:
    """Validate and queue a job, then enqueue it; a repeated keyed request returns the first job.

    While the broker is down the request fails with 503 and nothing is committed, so the client's retry
    (under the same Idempotency-Key) creates the job once. A job that is committed is always answered
    with 200 and always runs: if the send fails after the check, the reaper sends it."""

    def create() -> dict[str, Any]:
        # Before anything is written, so no write lock is held while the broker answers (or times out).
        require_broker(broker=broker, settings=settings)
        # Inside `create`, so a retry under the same Idempotency-Key replays its job instead of a 429.
        check_job_slots(session=session, owner=owner, limit=settings.max_concurrent_jobs)
        job = _insert_queued(session=session, settings=settings, owner=owner, request=request)
        return JobObject.of(job).model_dump(mode="json")

    claim = claim_for(owner=owner, key=idempotency_key, fingerprint=fingerprint)
    outcome = run_once(session=session, claim=claim, create=create)
    job = JobObject.model_validate(outcome.body)
    if outcome.created:  # run_once committed it
        send_committed(broker=broker, settings=settings, lifecycle=JOBS, row_id=job.id)
    return job


def _insert_queued(*, session: Session, settings: Settings, owner: str, request: JobCreate) -> Job:
    model = get_model(session=session, settings=settings, owner=owner, model_id=request.model)
    require_ready(model)
    check_variant(model=model, requested=request.ssm_structure)
    lora = resolve_lora(request.lora, family=model.family)
    hyperparameters = resolve_hyperparameters(request)
    integrations = resolve_integrations(request.integrations, settings=settings)
    # Checked before the job is added, so these lookups flush nothing and the job, its status change
    # and its events go to the database in one flush.
    _check_training_input(session=session, owner=owner, file_id=request.training_file, param="training_file")
    if request.validation_file is not None:
        _check_training_input(session=session, owner=owner, file_id=request.validation_file, param="validation_file")
    job = Job(
        id=new_id("ftjob"),
        owner=owner,
        model=model.id,
        training_file=request.training_file,
        validation_file=request.validation_file,
        precision=request.precision,
        lora=lora.stored() if lora else None,
        hyperparameters=hyperparameters.stored(),
        seed=request.seed if request.seed is not None else secrets.randbelow(MAX_RANDOM_SEED),
        suffix=request.suffix,
        user_metadata=request.metadata,
        integrations=integrations,
        status=JobStatus.VALIDATING_FILES,
        created_at=now(),
        metrics={},
        current_step=0,
        attempts=0,
        cancel_requested=False,
    )
    session.add(job)
    record_event(session, job.id, "message", f"Created fine-tuning job {job.id}")
    transition(session, job, JobStatus.QUEUED, message="Files validated; job queued")
    session.flush()
    return job


def _check_training_input(*, session: Session, owner: str, file_id: str, param: str) -> None:
    file = get_file(session=session, owner=owner, file_id=file_id)
    if file is None:
        raise not_found("file_not_found", f"No file with id {file_id!r}", param=param)
    if file.purpose != FINE_TUNE:
        raise invalid_request(
            f"File {file_id} has purpose {file.purpose!r}; fine-tuning needs a file uploaded with purpose"
            f" {FINE_TUNE!r}",
            param=param,
            code="invalid_file_purpose",
        )


def get_job(*, session: Session, owner: str, job_id: str) -> Job | None:
    """The owner's job with this id, or None."""
    return session.scalars(select(Job).where(Job.id == job_id, Job.owner == owner)).one_or_none()


def list_jobs(*, session: Session, owner: str, after: str | None, limit: int) -> Page[Job]:
    """The owner's jobs, newest first."""
    statement = select(Job).where(Job.owner == owner)
    return newest_first(session=session, statement=statement, entity=Job, after=after, limit=limit)


def cancel_job(*, session: Session, job: Job) -> Job:
    """Cancel a job that has not started; ask the worker to stop a running one; refuse a finished one."""
    # Locked so a worker claiming the job at this moment waits, then sees it cancelled (Postgres; SQLite
    # serialises writers anyway).
    session.refresh(job, with_for_update=True)
    if job.status in TERMINAL:
        raise conflict("job_not_cancellable", f"Job {job.id} has already {job.status}", param="fine_tuning_job_id")
    if job.status != JobStatus.RUNNING:
        transition(session, job, JobStatus.CANCELLED, message="Job cancelled before it started")
    elif not job.cancel_requested:
        job.cancel_requested = True
        record_event(session, job.id, "message", "Cancellation requested; the worker stops the job at its next step")
    return job


def list_checkpoints(*, session: Session, owner: str, job: Job, after: str | None, limit: int) -> Page[Checkpoint]:
    """The job's checkpoints, newest first."""
    statement = (
        select(Checkpoint).join(Job, Job.id == Checkpoint.job_id).where(Job.owner == owner, Checkpoint.job_id == job.id)
    )
    return newest_first(session=session, statement=statement, entity=Checkpoint, after=after, limit=limit)


def _require_succeeded(job: Job) -> None:
    if job.status != JobStatus.SUCCEEDED or job.adapter_key is None:
        raise conflict(
            "adapter_not_ready",
            f"Job {job.id} is {job.status}; its adapter can be downloaded once the job has succeeded",
            param="fine_tuning_job_id",
        )


def merged_archive(*, storage: ObjectStorage, job: Job) -> Iterator[bytes]:
    """The bytes of the job's merged-weights archive (jobs created with lora.export_merged)."""
    if not (job.lora or {}).get("export_merged"):
        raise conflict(
            "merged_model_not_requested",
            f"Job {job.id} was not created with lora.export_merged: its adapter is at /adapter",
            param="fine_tuning_job_id",
        )
    _require_succeeded(job)
    missing = not_found("merged_model_missing", f"The merged model of job {job.id} is missing from storage")
    return open_object(storage=storage, key=merged_key(job.id), missing=missing)


def adapter_archive(*, storage: ObjectStorage, job: Job) -> Iterator[bytes]:
    """The bytes of the job's adapter archive; raises adapter_not_ready until the job succeeded."""
    _require_succeeded(job)
    missing = not_found("adapter_missing", f"The adapter archive of job {job.id} is missing from storage")
    return open_object(storage=storage, key=job.adapter_key, missing=missing)
