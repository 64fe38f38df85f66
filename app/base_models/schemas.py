"""The request that creates a randomly initialized base model from an architecture (POST /v1/models)."""

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

from app.families import SUPPORTED_MODEL_TYPES
from app.jobs.schemas import STRICT

MAX_STATE = 256
ModelId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]


class ModelCreate(BaseModel):
    model_config = STRICT

    id: ModelId
    family: Literal[SUPPORTED_MODEL_TYPES]  # a model_type of the family catalog
    d_model: int = Field(ge=16, le=8192, multiple_of=16)  # Mamba-2 also a multiple of 32 (heads of 64)
    n_layer: int = Field(ge=1, le=128)
    d_state: int = Field(ge=1, le=MAX_STATE)
    tokenizer: str = Field("byte", min_length=1, max_length=512)  # "byte" or a ready model the caller sees
    ssm_structure: str | None = None  # Mamba: diagonal | controllable | observable
    a_constraint: str | None = None  # Mamba-2: none | stable
    seed: int = Field(0, ge=0, le=2**31 - 1)
    # A hybrid family's architecture fields beyond the three above (its catalog entry's `options`).
    options: dict[str, int | str] = Field(default_factory=dict, max_length=32)
