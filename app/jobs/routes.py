"""/v1/fine_tuning/jobs: create, list, read and cancel jobs; their events, checkpoints and adapter."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from app.deps import (
    BrokerDep,
    FingerprintDep,
    IdempotencyKeyDep,
    OwnerDep,
    SessionDep,
    SettingsDep,
    StorageDep,
)
from app.errors import not_found
from app.jobs import events, service
from app.jobs.models import Job
from app.jobs.schemas import CheckpointObject, JobCreate, JobEventObject, JobObject
from app.pagination import AfterQuery, LimitQuery, ListObject

router = APIRouter(prefix="/fine_tuning/jobs", tags=["fine-tuning"])

# No caching, and no buffering by nginx-style proxies, or events would arrive in bursts.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def valid_job(fine_tuning_job_id: str, owner: OwnerDep, session: SessionDep) -> Job:
    """The caller's job named in the path; another owner's job is as absent as a missing one."""
    job = service.get_job(session=session, owner=owner, job_id=fine_tuning_job_id)
    if job is None:
        message = f"No fine-tuning job with id {fine_tuning_job_id!r}"
        raise not_found("job_not_found", message, param="fine_tuning_job_id")
    return job


ValidJob = Annotated[Job, Depends(valid_job)]


@router.post("")
def create_job(
    body: JobCreate,
    owner: OwnerDep,
    session: SessionDep,
    settings: SettingsDep,
    broker: BrokerDep,
    fingerprint: FingerprintDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> JobObject:
    return service.create_job(
        session=session,
        settings=settings,
        broker=broker,
        owner=owner,
        request=body,
        idempotency_key=idempotency_key,
        fingerprint=fingerprint,
    )


@router.get("")
def list_jobs(
    owner: OwnerDep, session: SessionDep, after: AfterQuery = None, limit: LimitQuery = 20
) -> ListObject[JobObject]:
    page = service.list_jobs(session=session, owner=owner, after=after, limit=limit)
    return ListObject[JobObject](data=[JobObject.of(j) for j in page.items], has_more=page.has_more)


@router.get("/{fine_tuning_job_id}")
def get_job(job: ValidJob) -> JobObject:
    return JobObject.of(job)


@router.post("/{fine_tuning_job_id}/cancel")
def cancel_job(job: ValidJob, session: SessionDep) -> JobObject:
    return JobObject.of(service.cancel_job(session=session, job=job))


@router.get("/{fine_tuning_job_id}/events", response_model=ListObject[JobEventObject])
def list_events(
    job: ValidJob,
    owner: OwnerDep,
    session: SessionDep,
    settings: SettingsDep,
    after: Annotated[
        str | None,
        Query(max_length=64, description="An event id: older events when listing, newer ones when streaming"),
    ] = None,
    limit: LimitQuery = 20,
    stream: bool = False,
) -> ListObject[JobEventObject] | StreamingResponse:
    cursor = events.parse_event_id(after)
    if stream:
        frames = events.stream_events(database_url=settings.database_url, owner=owner, job_id=job.id, after=cursor)
        return StreamingResponse(frames, media_type="text/event-stream", headers=SSE_HEADERS)
    page = events.list_events(session=session, owner=owner, job_id=job.id, before=cursor, limit=limit)
    return ListObject[JobEventObject](data=[JobEventObject.of(e) for e in page.items], has_more=page.has_more)


@router.get("/{fine_tuning_job_id}/checkpoints")
def list_checkpoints(
    job: ValidJob, owner: OwnerDep, session: SessionDep, after: AfterQuery = None, limit: LimitQuery = 20
) -> ListObject[CheckpointObject]:
    page = service.list_checkpoints(session=session, owner=owner, job=job, after=after, limit=limit)
    return ListObject[CheckpointObject](data=[CheckpointObject.of(c) for c in page.items], has_more=page.has_more)


def _archive(chunks: Iterator[bytes], filename: str) -> StreamingResponse:
    return StreamingResponse(
        chunks, media_type="application/gzip", headers={"Content-Disposition": f'attachment; filename="{filename}"'}
    )


@router.get("/{fine_tuning_job_id}/adapter", response_class=StreamingResponse)
def download_adapter(job: ValidJob, storage: StorageDep) -> StreamingResponse:
    return _archive(service.adapter_archive(storage=storage, job=job), f"{job.id}-adapter.tar.gz")


@router.get("/{fine_tuning_job_id}/merged", response_class=StreamingResponse)
def download_merged(job: ValidJob, storage: StorageDep) -> StreamingResponse:
    """The base model with the adapter merged in (jobs created with `lora.export_merged`)."""
    return _archive(service.merged_archive(storage=storage, job=job), f"{job.id}-merged.tar.gz")
