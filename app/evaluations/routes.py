"""/v1/evaluations (create, list, read) and each fine-tuning job's stability report (JSON and plot)."""

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from app.deps import BrokerDep, Db, DbDep, RequestContext, StorageDep
from app.errors import not_found
from app.evaluations import service
from app.evaluations.models import Evaluation
from app.evaluations.schemas import EvaluationCreate, EvaluationObject
from app.jobs.routes import owned_job
from app.pagination import AfterQuery, LimitQuery, ListObject
from app.storage import ObjectStorage

router = APIRouter(tags=["evaluations"])


def owned_evaluation(ctx: RequestContext, evaluation_id: str) -> Evaluation:
    """The caller's evaluation with this id; another owner's is as absent as a missing one."""
    evaluation = service.get_evaluation(session=ctx.session, owner=ctx.owner, evaluation_id=evaluation_id)
    if evaluation is None:
        raise not_found("evaluation_not_found", f"No evaluation with id {evaluation_id!r}", param="evaluation_id")
    return evaluation


@router.post("/evaluations")
async def create_evaluation(body: EvaluationCreate, db: DbDep, broker: BrokerDep) -> EvaluationObject:
    return await db.run(
        lambda ctx: service.create_evaluation(
            session=ctx.session, settings=ctx.settings, broker=broker, owner=ctx.owner, request=body
        )
    )


@router.get("/evaluations")
async def list_evaluations(db: DbDep, after: AfterQuery = None, limit: LimitQuery = 20) -> ListObject[EvaluationObject]:
    def work(ctx: RequestContext) -> ListObject[EvaluationObject]:
        page = service.list_evaluations(session=ctx.session, owner=ctx.owner, after=after, limit=limit)
        return ListObject[EvaluationObject](data=[EvaluationObject.of(e) for e in page.items], has_more=page.has_more)

    return await db.read(work)


@router.get("/evaluations/{evaluation_id}")
async def get_evaluation(evaluation_id: str, db: DbDep) -> EvaluationObject:
    return await db.read(lambda ctx: EvaluationObject.of(owned_evaluation(ctx, evaluation_id)))


async def _stability(db: Db, storage: ObjectStorage, job_id: str, suffix: str, media_type: str) -> StreamingResponse:
    def work(ctx: RequestContext) -> StreamingResponse:
        body = service.stability_report(storage=storage, job=owned_job(ctx, job_id), suffix=suffix)
        return StreamingResponse(body, media_type=media_type)

    return await db.run(work)


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/stability", response_class=StreamingResponse)
async def get_stability(fine_tuning_job_id: str, db: DbDep, storage: StorageDep) -> StreamingResponse:
    return await _stability(db, storage, fine_tuning_job_id, "json", "application/json")


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/stability.png", response_class=StreamingResponse)
async def get_stability_plot(fine_tuning_job_id: str, db: DbDep, storage: StorageDep) -> StreamingResponse:
    return await _stability(db, storage, fine_tuning_job_id, "png", "image/png")
