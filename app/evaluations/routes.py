"""/v1/evaluations (create, list, read) and each fine-tuning job's stability report (JSON and plot)."""

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from app.deps import OwnerDep, SessionDep, SettingsDep, StorageDep
from app.errors import not_found
from app.evaluations import service
from app.evaluations.models import Evaluation
from app.evaluations.schemas import EvaluationCreate, EvaluationObject
from app.jobs.routes import ValidJob
from app.pagination import AfterQuery, LimitQuery, ListObject

router = APIRouter(tags=["evaluations"])


def get_enqueue() -> service.Enqueue:
    # Imported on first use, like app.deps.get_broker: app.queue loads Celery. Tests override this.
    from app.queue import enqueue_evaluation

    return enqueue_evaluation


EnqueueDep = Annotated[service.Enqueue, Depends(get_enqueue)]


def valid_evaluation(evaluation_id: str, owner: OwnerDep, session: SessionDep) -> Evaluation:
    """The caller's evaluation named in the path; another owner's is as absent as a missing one."""
    evaluation = service.get_evaluation(session=session, owner=owner, evaluation_id=evaluation_id)
    if evaluation is None:
        raise not_found("evaluation_not_found", f"No evaluation with id {evaluation_id!r}", param="evaluation_id")
    return evaluation


ValidEvaluation = Annotated[Evaluation, Depends(valid_evaluation)]


@router.post("/evaluations")
def create_evaluation(
    body: EvaluationCreate, owner: OwnerDep, session: SessionDep, settings: SettingsDep, enqueue: EnqueueDep
) -> EvaluationObject:
    return service.create_evaluation(session=session, settings=settings, enqueue=enqueue, owner=owner, request=body)


@router.get("/evaluations")
def list_evaluations(
    owner: OwnerDep, session: SessionDep, after: AfterQuery = None, limit: LimitQuery = 20
) -> ListObject[EvaluationObject]:
    page = service.list_evaluations(session=session, owner=owner, after=after, limit=limit)
    return ListObject[EvaluationObject](data=[EvaluationObject.of(e) for e in page.items], has_more=page.has_more)


@router.get("/evaluations/{evaluation_id}")
def get_evaluation(evaluation: ValidEvaluation) -> EvaluationObject:
    return EvaluationObject.of(evaluation)


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/stability", response_class=StreamingResponse)
def get_stability(job: ValidJob, storage: StorageDep) -> StreamingResponse:
    body = service.stability_report(storage=storage, job=job, suffix="json")
    return StreamingResponse(body, media_type="application/json")


@router.get("/fine_tuning/jobs/{fine_tuning_job_id}/stability.png", response_class=StreamingResponse)
def get_stability_plot(job: ValidJob, storage: StorageDep) -> StreamingResponse:
    return StreamingResponse(service.stability_report(storage=storage, job=job, suffix="png"), media_type="image/png")
