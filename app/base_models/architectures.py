"""What each supported architecture can fine-tune, keyed by the `model_type` of a model's config.json."""

# LoRA targets per architecture. The fused CUDA kernels read x_proj, dt_proj and out_proj (Mamba) and
# out_proj (Mamba-2) as raw weight buffers; the worker folds the adapter into them, which is why the
# input dropout of LoRA cannot apply to those targets.
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "mamba": ("in_proj", "x_proj", "dt_proj", "out_proj", "embeddings", "lm_head"),
    "mamba2": ("in_proj", "out_proj", "embeddings", "lm_head"),
}
KERNEL_READ_TARGETS: dict[str, frozenset[str]] = {
    "mamba": frozenset({"x_proj", "dt_proj", "out_proj"}),
    "mamba2": frozenset({"out_proj"}),
}
DEFAULT_LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "mamba": ("in_proj", "x_proj", "dt_proj", "out_proj"),
    "mamba2": ("in_proj", "out_proj"),
}
SUPPORTED_MODEL_TYPES = tuple(LORA_TARGETS)

# A hub id whose family we cannot tell yet: any architecture's targets are accepted (the worker checks them
# against the real model), dropout is checked against every kernel, and the default is what all share.
ANY_FAMILY_TARGETS = tuple(dict.fromkeys(t for targets in LORA_TARGETS.values() for t in targets))
ANY_FAMILY_KERNEL_READ = frozenset().union(*KERNEL_READ_TARGETS.values())
ANY_FAMILY_DEFAULTS = tuple(
    t for t in ANY_FAMILY_TARGETS if all(t in defaults for defaults in DEFAULT_LORA_TARGETS.values())
)


def lora_targets(family: str | None) -> tuple[str, ...]:
    """The modules LoRA may target on `family` (None: a family not known yet)."""
    return LORA_TARGETS[family] if family else ANY_FAMILY_TARGETS


def kernel_read_targets(family: str | None) -> frozenset[str]:
    return KERNEL_READ_TARGETS[family] if family else ANY_FAMILY_KERNEL_READ


def default_lora_targets(family: str | None) -> tuple[str, ...]:
    return DEFAULT_LORA_TARGETS[family] if family else ANY_FAMILY_DEFAULTS


# Sparse Mamba variants, per family; the first is the stock model. The worker's
# worker/engine/sparse_mamba.py implements them and checks the same names when it loads a model.
VARIANT_FIELD = {"mamba": "ssm_structure", "mamba2": "a_constraint"}
VARIANTS = {"mamba": ("diagonal", "controllable", "observable"), "mamba2": ("none", "stable")}
COMPANION_STRUCTURES = frozenset({"controllable", "observable"})
# A companion state is diagonalized through its roots, in conjugate pairs (so d_state is even); the
# Vandermonde matrix of the roots conditions worse as d_state grows, hence the lower ceiling.
MAX_COMPANION_STATE = 16
MAX_STATE = 256
