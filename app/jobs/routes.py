"""/v1/fine_tuning/jobs: create, list, read and cancel jobs; their events, checkpoints and adapter."""

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from app.deps import BrokerDep, Db, DbDep, FingerprintDep, IdempotencyKeyDep, RequestContext, StorageDep
from app.errors import not_found
from app.jobs import events, service
from app.jobs.models import Job
from app.jobs.schemas import CheckpointObject, JobCreate, JobEventObject, JobObject
from app.pagination import AfterQuery, LimitQuery, ListObject

router = APIRouter(prefix="/fine_tuning/jobs", tags=["fine-tuning"])

# No caching, and no buffering by nginx-style proxies, or events would arrive in bursts.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def owned_job(ctx: RequestContext, job_id: str) -> Job:
    """The caller's job with this id; another owner's job is as absent as a missing one."""
    job = service.get_job(session=ctx.session, owner=ctx.owner, job_id=job_id)
    if job is None:
        raise not_found("job_not_found", f"No fine-tuning job with id {job_id!r}", param="fine_tuning_job_id")
    return job


@router.post("")
async def create_job(
    body: JobCreate,
    db: DbDep,
    broker: BrokerDep,
    fingerprint: FingerprintDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> JobObject:
    return await db.run(
        lambda ctx: service.create_job(
            session=ctx.session,
            settings=ctx.settings,
            broker=broker,
            owner=ctx.owner,
            request=body,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
        )
    )


@router.get("")
async def list_jobs(db: DbDep, after: AfterQuery = None, limit: LimitQuery = 20) -> ListObject[JobObject]:
    def work(ctx: RequestContext) -> ListObject[JobObject]:
        page = service.list_jobs(session=ctx.session, owner=ctx.owner, after=after, limit=limit)
        return ListObject[JobObject](data=[JobObject.of(j) for j in page.items], has_more=page.has_more)

    return await db.read(work)


@router.get("/{fine_tuning_job_id}")
async def get_job(fine_tuning_job_id: str, db: DbDep) -> JobObject:
    return await db.read(lambda ctx: JobObject.of(owned_job(ctx, fine_tuning_job_id)))


@router.post("/{fine_tuning_job_id}/cancel")
async def cancel_job(fine_tuning_job_id: str, db: DbDep) -> JobObject:
    return await db.run(
        lambda ctx: JobObject.of(service.cancel_job(session=ctx.session, job=owned_job(ctx, fine_tuning_job_id)))
    )


@router.get("/{fine_tuning_job_id}/events", response_model=ListObject[JobEventObject])
async def list_events(
    fine_tuning_job_id: str,
    db: DbDep,
    after: Annotated[
        str | None,
        Query(max_length=64, description="An event id: older events when listing, newer ones when streaming"),
    ] = None,
    limit: LimitQuery = 20,
    stream: bool = False,
) -> ListObject[JobEventObject] | StreamingResponse:
    cursor = events.parse_event_id(after)

    def work(ctx: RequestContext) -> ListObject[JobEventObject] | StreamingResponse:
        job = owned_job(ctx, fine_tuning_job_id)
        if stream:
            frames = events.stream_events(
                database_url=ctx.settings.database_url, owner=ctx.owner, job_id=job.id, after=cursor, api_key=db.api_key
            )
            return StreamingResponse(frames, media_type="text/event-stream", headers=SSE_HEADERS)
        page = events.list_events(session=ctx.session, owner=ctx.owner, job_id=job.id, before=cursor, limit=limit)
        return ListObject[JobEventObject](data=[JobEventObject.of(e) for e in page.items], has_more=page.has_more)

    return await db.read(work)


@router.get("/{fine_tuning_job_id}/checkpoints")
async def list_checkpoints(
    fine_tuning_job_id: str, db: DbDep, after: AfterQuery = None, limit: LimitQuery = 20
) -> ListObject[CheckpointObject]:
    def work(ctx: RequestContext) -> ListObject[CheckpointObject]:
        job = owned_job(ctx, fine_tuning_job_id)
        page = service.list_checkpoints(session=ctx.session, owner=ctx.owner, job=job, after=after, limit=limit)
        return ListObject[CheckpointObject](data=[CheckpointObject.of(c) for c in page.items], has_more=page.has_more)

    return await db.read(work)


async def _archive(db: Db, job_id: str, open_archive: Callable[[Job], Iterator[bytes]], name: str) -> StreamingResponse:
    """A job's stored archive, `{job id}-{name}.tar.gz`, opened (`open_archive`) on `db.run`'s thread."""

    def work(ctx: RequestContext) -> StreamingResponse:
        job = owned_job(ctx, job_id)
        disposition = f'attachment; filename="{job.id}-{name}.tar.gz"'
        return StreamingResponse(
            open_archive(job), media_type="application/gzip", headers={"Content-Disposition": disposition}
        )

    return await db.run(work)


@router.get("/{fine_tuning_job_id}/adapter", response_class=StreamingResponse)
async def download_adapter(fine_tuning_job_id: str, db: DbDep, storage: StorageDep) -> StreamingResponse:
    return await _archive(
        db, fine_tuning_job_id, lambda job: service.adapter_archive(storage=storage, job=job), "adapter"
    )


@router.get("/{fine_tuning_job_id}/merged", response_class=StreamingResponse)
async def download_merged(fine_tuning_job_id: str, db: DbDep, storage: StorageDep) -> StreamingResponse:
    """The base model with the adapter merged in (jobs created with `lora.export_merged`)."""
    return await _archive(
        db, fine_tuning_job_id, lambda job: service.merged_archive(storage=storage, job=job), "merged"
    )
