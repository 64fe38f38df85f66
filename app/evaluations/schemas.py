"""Shapes of the evaluations API."""

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from app.evaluations.models import Evaluation
from app.jobs.schemas import STRICT, LongName, Name

MAX_SHOTS = 32


class EvaluationCreate(BaseModel):
    model_config = STRICT

    # Exactly one: a base model id, or a succeeded fine-tuning job (its base model plus its adapter).
    model: LongName | None = None
    fine_tuning_job: Name | None = None
    # Names of shipped tasks (app/evaluations/tasks/<name>.jsonl, e.g. "lookup") or ids of the caller's uploaded files.
    tasks: list[Name] = Field(default_factory=list, max_length=16)
    shots: list[int] = Field(default_factory=lambda: [0, 1, 3], min_length=1, max_length=8)
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    validation_file: Name | None = None
    # An earlier succeeded evaluation of the caller: ICL gains are reported as a ratio against it.
    reference_evaluation: Name | None = None
    limit: int | None = Field(None, ge=1, le=1_000_000, description="Examples scored per task (all by default)")
    seed: int = Field(1234, ge=0, le=2**31 - 1, description="Picks the few-shot examples")

    @model_validator(mode="after")
    def _check(self) -> "EvaluationCreate":
        if (self.model is None) == (self.fine_tuning_job is None):
            raise ValueError("give exactly one of model and fine_tuning_job")
        if not self.tasks and self.validation_file is None:
            raise ValueError("give at least one task or a validation_file")
        if any(not 0 <= k <= MAX_SHOTS for k in self.shots):
            raise ValueError(f"shots must be between 0 and {MAX_SHOTS}")
        return self


class EvaluationObject(BaseModel):
    id: str
    object: Literal["evaluation"] = "evaluation"
    status: str
    created_at: int
    started_at: int | None
    finished_at: int | None
    model: str
    fine_tuning_job: str | None
    tasks: list[str]
    shots: list[int]
    precision: str
    validation_file: str | None
    reference_evaluation: str | None
    limit: int | None
    seed: int
    results: dict[str, Any] | None
    error: dict[str, Any] | None

    @classmethod
    def of(cls, evaluation: Evaluation) -> "EvaluationObject":
        return cls(
            id=evaluation.id,
            status=evaluation.status,
            created_at=evaluation.created_at,
            started_at=evaluation.started_at,
            finished_at=evaluation.finished_at,
            model=evaluation.model,
            fine_tuning_job=evaluation.fine_tuning_job,
            tasks=evaluation.tasks,
            shots=evaluation.shots,
            precision=evaluation.precision,
            validation_file=evaluation.validation_file,
            reference_evaluation=evaluation.reference_evaluation,
            limit=evaluation.limit,
            seed=evaluation.seed,
            results=evaluation.results,
            error=evaluation.error,
        )
