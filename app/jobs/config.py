"""Turn a job request's training settings into the resolved ones a worker runs with."""

from app.base_models.architectures import DEFAULT_LORA_TARGETS, KERNEL_READ_TARGETS, LORA_TARGETS
from app.errors import invalid_request
from app.jobs.schemas import Hyperparameters, JobCreate, LoraConfig, LoraRequest

# A hub id whose family we cannot tell yet: accept any architecture's targets (the worker checks them
# against the real model), fold-check against every kernel, and default to what all families share.
ANY_FAMILY_TARGETS = tuple(dict.fromkeys(t for targets in LORA_TARGETS.values() for t in targets))
ANY_FAMILY_KERNEL_READ = frozenset().union(*KERNEL_READ_TARGETS.values())
ANY_FAMILY_DEFAULTS = tuple(
    t for t in ANY_FAMILY_TARGETS if all(t in defaults for defaults in DEFAULT_LORA_TARGETS.values())
)


def resolve_lora(lora: LoraRequest | None, *, family: str | None) -> LoraConfig | None:
    """The LoRA config for a model of `family`, or None for full fine-tuning; raises on invalid targets."""
    if lora is None:
        return None
    valid = LORA_TARGETS[family] if family else ANY_FAMILY_TARGETS
    defaults = DEFAULT_LORA_TARGETS[family] if family else ANY_FAMILY_DEFAULTS
    targets = list(dict.fromkeys(lora.target_modules or defaults))
    architecture = f"{family} models" if family else "any supported architecture"
    if unknown := [t for t in targets if t not in valid]:
        raise invalid_request(
            f"{unknown[0]!r} is not a LoRA target of {architecture}; valid targets are {', '.join(valid)}",
            param="lora.target_modules",
            code="invalid_target_module",
        )
    kernel_read = KERNEL_READ_TARGETS[family] if family else ANY_FAMILY_KERNEL_READ
    if lora.dropout > 0 and (folded := [t for t in targets if t in kernel_read]):
        raise invalid_request(
            f"LoRA dropout must be 0 when targeting {', '.join(folded)}: the fused kernel reads those"
            " weights directly, so the adapter is folded into the weight (W + scale * B @ A) and there is"
            " no separate adapter input to apply dropout to. Set lora.dropout to 0 or drop those targets.",
            param="lora.dropout",
            code="invalid_lora_dropout",
        )
    return LoraConfig(
        r=lora.r,
        alpha=lora.alpha,
        dropout=lora.dropout,
        target_modules=targets,
        train_ssm_params=lora.train_ssm_params,
        export_merged=lora.export_merged,
    )


def resolve_hyperparameters(request: JobCreate) -> Hyperparameters:
    """Hyperparameters from the top level or from OpenAI's `method.supervised`, never both."""
    supervised = request.method.supervised if request.method else None
    nested = supervised.hyperparameters if supervised else None
    if request.hyperparameters is not None and nested is not None:
        raise invalid_request(
            "Give hyperparameters either at the top level or in method.supervised, not both",
            param="method.supervised.hyperparameters",
        )
    return request.hyperparameters or nested or Hyperparameters()
