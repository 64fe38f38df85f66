"""GET /v1/models: the base models jobs can fine-tune; POST /v1/models: a new one from an architecture."""

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel

from app.base_models import service
from app.base_models.schemas import ModelCreate
from app.base_models.service import BaseModelInfo
from app.deps import BrokerDep, DbDep, RequestContext
from app.pagination import ListObject

router = APIRouter(prefix="/models", tags=["models"])


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    family: str | None  # a model_type of app/families/; None for a hub id only the worker can tell
    parameters: int | None
    lora_targets: list[str]
    status: Literal["ready", "creating", "failed"]
    error: dict[str, Any] | None  # a failed creation's code and message
    ssm_structure: str | None  # Mamba: diagonal | controllable | observable
    a_constraint: str | None  # Mamba-2: none | stable
    options: dict[str, Any] | None  # a created model's architecture options (a hybrid's layers, heads, experts)

    @classmethod
    def of(cls, info: BaseModelInfo) -> "ModelObject":
        return cls(
            id=info.id,
            created=info.created,
            owned_by=info.owned_by,
            family=info.family,
            parameters=info.parameters,
            lora_targets=list(info.lora_targets),
            status=info.status,
            error=info.error,
            ssm_structure=info.variant if info.variant_field == "ssm_structure" else None,
            a_constraint=info.variant if info.variant_field == "a_constraint" else None,
            options=info.options,
        )


# Shared models live in the models folder: `db.run` reads it on its thread, beside the caller's rows.
@router.get("")
async def list_models(db: DbDep) -> ListObject[ModelObject]:
    def work(ctx: RequestContext) -> ListObject[ModelObject]:
        models = service.list_models(session=ctx.session, settings=ctx.settings, owner=ctx.owner)
        return ListObject[ModelObject](data=[ModelObject.of(m) for m in models], has_more=False)

    return await db.run(work)


# Hub ids contain "/", hence the path converter.
@router.get("/{model_id:path}")
async def get_model(model_id: str, db: DbDep) -> ModelObject:
    return await db.run(
        lambda ctx: ModelObject.of(
            service.get_model(session=ctx.session, settings=ctx.settings, owner=ctx.owner, model_id=model_id)
        )
    )


@router.post("")
async def create_model(request: ModelCreate, db: DbDep, broker: BrokerDep) -> ModelObject:
    """A randomly initialized model; `status` is "creating" until a worker has written its weights."""
    return await db.run(
        lambda ctx: ModelObject.of(
            service.create_model(
                session=ctx.session, settings=ctx.settings, broker=broker, owner=ctx.owner, request=request
            )
        )
    )
