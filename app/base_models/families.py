"""The model families this service fine-tunes: one catalog entry each, keyed by the `model_type` of a
model's config.json (which is also a family's name in the API).

Standard library only: the API reads it without torch, and the worker's engine reads the same entries
(each family's torch side is one module of worker/engine/families/, registered under the same key).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    model_type: str
    # The module names LoRA may target, and the targets a job gets when it names none.
    lora_targets: tuple[str, ...]
    default_targets: tuple[str, ...]
    # Targets whose weight a fused CUDA kernel reads as a raw buffer: the worker folds the adapter into it,
    # which is why LoRA's input dropout cannot apply to them.
    kernel_read_targets: frozenset[str]
    # The SSM's own parameters (names relative to a mixer), trained in full with `train_ssm_params` and
    # kept in fp32 under bf16.
    ssm_params: tuple[str, ...]
    # Sparse Mamba variants: the config field that selects one, and its values (the first is the stock model).
    variant_field: str
    variants: tuple[str, ...]
    # What a hub id's name holds when it is a model of this family (the worker checks the real config).
    hub_marks: tuple[str, ...]

    def __post_init__(self) -> None:
        targets = set(self.lora_targets)
        if not (set(self.default_targets) <= targets and self.kernel_read_targets <= targets):
            raise ValueError(f"{self.model_type}: default and kernel-read targets must be LoRA targets")


MAMBA = Family(
    model_type="mamba",
    lora_targets=("in_proj", "x_proj", "dt_proj", "out_proj", "embeddings", "lm_head"),
    default_targets=("in_proj", "x_proj", "dt_proj", "out_proj"),
    kernel_read_targets=frozenset({"x_proj", "dt_proj", "out_proj"}),
    # A_root_*: the roots of an SC/SO model's companion A, which replace A_log.
    ssm_params=("A_log", "D", "dt_proj.bias", "A_root_log_decay", "A_root_log_freq"),
    variant_field="ssm_structure",
    variants=("diagonal", "controllable", "observable"),
    hub_marks=("mamba",),
)
MAMBA2 = Family(
    model_type="mamba2",
    lora_targets=("in_proj", "out_proj", "embeddings", "lm_head"),
    default_targets=("in_proj", "out_proj"),
    kernel_read_targets=frozenset({"out_proj"}),
    ssm_params=("A_log", "D", "dt_bias"),
    variant_field="a_constraint",
    variants=("none", "stable"),
    hub_marks=("mamba2", "mamba-2"),
)

FAMILIES: dict[str, Family] = {f.model_type: f for f in (MAMBA, MAMBA2)}
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)
VARIANT_FIELDS = tuple(dict.fromkeys(f.variant_field for f in FAMILIES.values()))

# A hub id whose family we cannot tell yet: any family's targets are accepted (the worker checks them
# against the real model), dropout is checked against every kernel, and the default is what all share.
ANY_FAMILY_TARGETS = tuple(dict.fromkeys(t for f in FAMILIES.values() for t in f.lora_targets))
ANY_FAMILY_KERNEL_READ = frozenset().union(*(f.kernel_read_targets for f in FAMILIES.values()))
ANY_FAMILY_DEFAULTS = tuple(t for t in ANY_FAMILY_TARGETS if all(t in f.default_targets for f in FAMILIES.values()))


def lora_targets(family: str | None) -> tuple[str, ...]:
    """The modules LoRA may target on `family` (None: a family not known yet)."""
    return FAMILIES[family].lora_targets if family else ANY_FAMILY_TARGETS


def kernel_read_targets(family: str | None) -> frozenset[str]:
    return FAMILIES[family].kernel_read_targets if family else ANY_FAMILY_KERNEL_READ


def default_lora_targets(family: str | None) -> tuple[str, ...]:
    return FAMILIES[family].default_targets if family else ANY_FAMILY_DEFAULTS


# SC/SO Mamba: the companion structures.
COMPANION_STRUCTURES = frozenset({"controllable", "observable"})
# A companion state is diagonalized through its roots, in conjugate pairs (so d_state is even); the
# Vandermonde matrix of the roots conditions worse as d_state grows, hence the lower ceiling.
MAX_COMPANION_STATE = 16
MAX_STATE = 256
