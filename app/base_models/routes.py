"""GET /v1/models: the base models jobs can fine-tune; POST /v1/models: a new one from an architecture."""

from collections.abc import Callable
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel

from app.base_models import service
from app.base_models.schemas import ModelCreate
from app.base_models.service import BaseModelInfo
from app.deps import OwnerDep, SettingsDep
from app.pagination import ListObject

router = APIRouter(prefix="/models", tags=["models"])


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    family: str | None  # "mamba" | "mamba2"; None for a hub id whose family only the worker can tell
    parameters: int | None
    lora_targets: list[str]
    status: Literal["ready", "creating"]
    ssm_structure: str | None  # Mamba: diagonal | controllable | observable
    a_constraint: str | None  # Mamba-2: none | stable

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
            ssm_structure=info.variant if info.family == "mamba" else None,
            a_constraint=info.variant if info.family == "mamba2" else None,
        )


def get_model_enqueuer() -> Callable[..., None]:
    # Imported on first use, as app.deps.get_broker does: app.queue loads Celery.
    from app.queue import enqueue_model_creation

    return enqueue_model_creation


EnqueueModelDep = Annotated[Callable[..., None], Depends(get_model_enqueuer)]


@router.get("")
def list_models(settings: SettingsDep, owner: OwnerDep) -> ListObject[ModelObject]:
    models = service.list_models(settings=settings, owner=owner)
    return ListObject[ModelObject](data=[ModelObject.of(m) for m in models], has_more=False)


# Hub ids contain "/", hence the path converter.
@router.get("/{model_id:path}")
def get_model(model_id: str, settings: SettingsDep, owner: OwnerDep) -> ModelObject:
    return ModelObject.of(service.get_model(settings=settings, model_id=model_id, owner=owner))


@router.post("")
def create_model(request: ModelCreate, settings: SettingsDep, owner: OwnerDep, enqueue: EnqueueModelDep) -> ModelObject:
    """A randomly initialized model; `status` is "creating" until a worker has written its weights."""
    return ModelObject.of(service.create_model(settings=settings, owner=owner, request=request, enqueue=enqueue))
