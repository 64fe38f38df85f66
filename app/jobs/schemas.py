"""Shapes of the fine-tuning jobs API: OpenAI's, plus LoRA, precision and progress."""

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.jobs.contract import HyperparameterSpec, LoraSpec
from app.jobs.models import Checkpoint, Job, JobEvent

# The config of every request body. Unknown keys are typos to report, not to ignore; NaN and infinities
# are never valid settings; and a value must arrive as its own JSON type: "1" or true is no number, 1 no
# boolean (a whole number still does for a decimal field).
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)
MAX_LORA_ALPHA = 4096


def _storable(value: str) -> str:
    # Postgres text cannot hold NUL, and a lone surrogate cannot be encoded at all: refuse both up front.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no unpaired surrogates)") from None
    return value


Storable = Annotated[str, AfterValidator(_storable)]

# The suffix becomes part of `fine_tuned_model`, which clients print, log and use in paths (OpenAI:
# up to 64 characters): no separators, spaces, or bidirectional controls that display it reversed.
SUFFIX = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _suffix(value: str) -> str:
    if not SUFFIX.fullmatch(value):
        raise ValueError("must be 1 to 64 characters, only ASCII letters, digits, '-', '_' and '.'")
    return value


Suffix = Annotated[str, AfterValidator(_suffix)]
Name = Annotated[Storable, StringConstraints(min_length=1, max_length=64)]
LongName = Annotated[Storable, StringConstraints(min_length=1, max_length=512)]
MetadataValue = Annotated[Storable, StringConstraints(max_length=512)]


class Hyperparameters(BaseModel):
    """The request's hyperparameters: bounds here, defaults and meaning in the job contract."""

    model_config = STRICT

    n_epochs: int = Field(HyperparameterSpec.n_epochs, ge=1, le=100)
    batch_size: int = Field(HyperparameterSpec.batch_size, ge=1, le=1024)
    learning_rate: float = Field(HyperparameterSpec.learning_rate, gt=0, le=1)
    max_seq_len: int = Field(HyperparameterSpec.max_seq_len, ge=16, le=65536)
    # Memory-lean mode: recompute each layer's activations in backward instead of keeping them, trading
    # speed for peak memory (bench/RESULTS.md).
    activation_recompute: bool = HyperparameterSpec.activation_recompute

    @model_validator(mode="before")
    @classmethod
    def _auto_means_default(cls, data: Any) -> Any:
        # OpenAI clients send "auto" for "choose for me"; our choice is the default. Dropping such keys
        # also lets OpenAI-only knobs such as learning_rate_multiplier="auto" through harmlessly.
        if isinstance(data, dict):
            return {key: value for key, value in data.items() if value != "auto"}
        return data


class LoraRequest(BaseModel):
    """The request's LoRA settings: bounds here, defaults and meaning in the job contract."""

    model_config = STRICT

    r: int = Field(LoraSpec.r, ge=1, le=256)
    # The adapter's update is scaled by alpha / r; beyond a few thousand it only overflows the activations.
    alpha: float = Field(LoraSpec.alpha, gt=0, le=MAX_LORA_ALPHA)
    dropout: float = Field(LoraSpec.dropout, ge=0, lt=1)
    # None: the defaults of the model's family (app/families/).
    target_modules: list[Name] | None = Field(None, min_length=1, max_length=16)
    train_ssm_params: bool = LoraSpec.train_ssm_params
    export_merged: bool = LoraSpec.export_merged


class SupervisedMethod(BaseModel):
    model_config = STRICT

    hyperparameters: Hyperparameters | None = None


class Method(BaseModel):
    """OpenAI's `method`; only supervised fine-tuning exists here."""

    model_config = STRICT

    type: Literal["supervised"]
    supervised: SupervisedMethod | None = None


class WandbIntegration(BaseModel):
    """Where a job's W&B run goes (OpenAI's shape); the server's W&B credentials and mode apply."""

    model_config = STRICT

    project: LongName
    name: LongName | None = None
    entity: LongName | None = None
    tags: list[Name] | None = Field(None, max_length=16)


class MlflowIntegration(BaseModel):
    """Where a job's MLflow run goes: the server's tracking server unless it lets jobs name their own."""

    model_config = STRICT

    experiment_name: LongName
    run_name: LongName | None = None
    tracking_uri: LongName | None = None


class Integration(BaseModel):
    """One experiment tracker the worker logs hyperparameters and per-step metrics to."""

    model_config = STRICT

    type: Literal["wandb", "mlflow"]
    wandb: WandbIntegration | None = None
    mlflow: MlflowIntegration | None = None

    @model_validator(mode="after")
    def _settings_of_its_type(self) -> "Integration":
        other = "mlflow" if self.type == "wandb" else "wandb"
        if getattr(self, self.type) is None:
            raise ValueError(f"an integration of type {self.type!r} needs its settings under {self.type!r}")
        if getattr(self, other) is not None:
            raise ValueError(f"an integration of type {self.type!r} takes no {other!r} settings")
        return self


class JobCreate(BaseModel):
    model_config = STRICT

    model: LongName
    training_file: Name
    validation_file: Name | None = None
    precision: Literal["fp32", "fp16", "bf16"] = "bf16"
    # Absent: LoRA with defaults. An explicit null: full fine-tuning.
    lora: LoraRequest | None = Field(default_factory=LoraRequest)
    hyperparameters: Hyperparameters | None = None
    method: Method | None = None
    seed: int | None = Field(None, ge=0, le=2**63 - 1)
    suffix: Suffix | None = None
    metadata: dict[Name, MetadataValue] | None = Field(None, max_length=16)
    # The structure the job expects the model to have (Mamba); a job can never change it.
    ssm_structure: Literal["diagonal", "controllable", "observable"] | None = None
    integrations: list[Integration] | None = Field(None, max_length=2)


class Progress(BaseModel):
    step: int
    total_steps: int | None


class JobObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    model: str
    status: str
    created_at: int
    finished_at: int | None
    training_file: str
    validation_file: str | None
    precision: str
    lora: LoraSpec | None
    hyperparameters: HyperparameterSpec
    method: dict[str, Any]
    seed: int
    suffix: str | None
    metadata: dict[str, str] | None
    trained_tokens: int | None
    error: dict[str, Any] | None
    fine_tuned_model: str | None
    metrics: dict[str, Any]
    progress: Progress
    integrations: list[dict[str, Any]] | None
    # OpenAI's: a tenant is our organization; the results are the metrics CSV and the loss curve (files).
    organization_id: str
    result_files: list[str]

    @classmethod
    def of(cls, job: Job) -> "JobObject":
        hyperparameters = HyperparameterSpec.from_stored(job.hyperparameters)
        return cls(
            id=job.id,
            model=job.model,
            status=job.status,
            created_at=job.created_at,
            finished_at=job.finished_at,
            training_file=job.training_file,
            validation_file=job.validation_file,
            precision=job.precision,
            lora=LoraSpec.from_stored(job.lora) if job.lora is not None else None,
            hyperparameters=hyperparameters,
            method={"type": "supervised", "supervised": {"hyperparameters": hyperparameters.stored()}},
            seed=job.seed,
            suffix=job.suffix,
            metadata=job.user_metadata,
            trained_tokens=job.trained_tokens,
            error=job.error,
            fine_tuned_model=job.fine_tuned_model,
            metrics=job.metrics or {},
            progress=Progress(step=job.current_step or 0, total_steps=job.total_steps),
            integrations=job.integrations,
            organization_id=job.owner,
            result_files=job.result_files or [],
        )


class JobEventObject(BaseModel):
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    id: str
    created_at: int
    level: str
    type: str
    message: str
    data: dict[str, Any] | None

    @classmethod
    def of(cls, event: JobEvent) -> "JobEventObject":
        return cls(
            id=event_id(event.id),
            created_at=event.created_at,
            level=event.level,
            type=event.type,
            message=event.message,
            data=event.data,
        )


class CheckpointObject(BaseModel):
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    id: str
    created_at: int
    fine_tuning_job_id: str
    step_number: int
    metrics: dict[str, Any]

    @classmethod
    def of(cls, checkpoint: Checkpoint) -> "CheckpointObject":
        return cls(
            id=checkpoint.id,
            created_at=checkpoint.created_at,
            fine_tuning_job_id=checkpoint.job_id,
            step_number=checkpoint.step,
            metrics=checkpoint.metrics or {},
        )


EVENT_ID_PREFIX = "ftevent-"


def event_id(row_id: int) -> str:
    return f"{EVENT_ID_PREFIX}{row_id}"
