"""GET /v1/models: the base models jobs can fine-tune."""

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from app.base_models import service
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

    @classmethod
    def of(cls, info: BaseModelInfo) -> "ModelObject":
        return cls(
            id=info.id,
            created=info.created,
            owned_by=info.owned_by,
            family=info.family,
            parameters=info.parameters,
            lora_targets=list(info.lora_targets),
        )


@router.get("")
def list_models(settings: SettingsDep, _owner: OwnerDep) -> ListObject[ModelObject]:
    models = service.list_models(settings=settings)
    return ListObject[ModelObject](data=[ModelObject.of(m) for m in models], has_more=False)


# Hub ids contain "/", hence the path converter.
@router.get("/{model_id:path}")
def get_model(model_id: str, settings: SettingsDep, _owner: OwnerDep) -> ModelObject:
    return ModelObject.of(service.get_model(settings=settings, model_id=model_id))
