"""Turn a job request's training settings into the resolved ones a worker runs with (app/jobs/contract.py)."""

from typing import Any

from app.errors import invalid_request
from app.families import lora_targets, undroppable_targets
from app.jobs.contract import HyperparameterSpec, LoraSpec
from app.jobs.schemas import Integration, JobCreate, LoraRequest
from app.settings import Settings


def resolve_lora(lora: LoraRequest | None, *, family: str | None) -> LoraSpec | None:
    """The LoRA spec for a model of `family`, or None for full fine-tuning; raises on invalid targets."""
    if lora is None:
        return None
    given = lora.model_dump(exclude_none=True)  # no target_modules: the family's defaults
    if "target_modules" in given:
        given["target_modules"] = tuple(dict.fromkeys(given["target_modules"]))
    spec = LoraSpec.for_family(family, **given)
    valid = lora_targets(family)
    architecture = f"{family} models" if family else "any supported architecture"
    if unknown := [t for t in spec.target_modules if t not in valid]:
        raise invalid_request(
            f"{unknown[0]!r} is not a LoRA target of {architecture}; valid targets are {', '.join(valid)}",
            param="lora.target_modules",
            code="invalid_target_module",
        )
    if spec.dropout > 0 and (folded := [t for t in spec.target_modules if t in undroppable_targets(family)]):
        raise invalid_request(
            f"LoRA dropout must be 0 when targeting {', '.join(folded)}: a fused kernel reads those"
            " weights directly, so the adapter is folded into the weight (W + scale * B @ A), or they are"
            " expert weights whose adapter peft applies to the parameter; either way there is no separate"
            " adapter input to apply dropout to. Set lora.dropout to 0 or drop those targets.",
            param="lora.dropout",
            code="invalid_lora_dropout",
        )
    return spec


def resolve_hyperparameters(request: JobCreate) -> HyperparameterSpec:
    """Hyperparameters from the top level or from OpenAI's `method.supervised`, never both."""
    supervised = request.method.supervised if request.method else None
    nested = supervised.hyperparameters if supervised else None
    if request.hyperparameters is not None and nested is not None:
        raise invalid_request(
            "Give hyperparameters either at the top level or in method.supervised, not both",
            param="method.supervised.hyperparameters",
        )
    chosen = request.hyperparameters or nested
    return HyperparameterSpec(**chosen.model_dump()) if chosen else HyperparameterSpec()


def resolve_integrations(integrations: list[Integration] | None, *, settings: Settings) -> list[dict[str, Any]] | None:
    """The integrations to store on the job; raises on a repeated tracker or a tracking URI the server
    keeps to itself."""
    if integrations is None:
        return None
    seen: set[str] = set()
    for index, integration in enumerate(integrations):
        if integration.type in seen:
            raise invalid_request(
                f"Only one integration of type {integration.type!r} per job", param=f"integrations[{index}].type"
            )
        seen.add(integration.type)
        mlflow = integration.mlflow
        if mlflow is not None and mlflow.tracking_uri is not None and not settings.mlflow_allow_job_tracking_uri:
            raise invalid_request(
                "This server logs MLflow runs to its own tracking server; leave tracking_uri out",
                param=f"integrations[{index}].mlflow.tracking_uri",
            )
    return [integration.model_dump(exclude_none=True) for integration in integrations]
