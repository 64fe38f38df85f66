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

# Sparse Mamba variants, per family; the first is the stock model. The worker's
# worker/engine/sparse_mamba.py implements them and checks the same names when it loads a model.
VARIANT_FIELD = {"mamba": "ssm_structure", "mamba2": "a_constraint"}
VARIANTS = {"mamba": ("diagonal", "controllable", "observable"), "mamba2": ("none", "stable")}
COMPANION_STRUCTURES = frozenset({"controllable", "observable"})
# A companion state is diagonalized through its roots, in conjugate pairs (so d_state is even); the
# Vandermonde matrix of the roots conditions worse as d_state grows, hence the lower ceiling.
MAX_COMPANION_STATE = 16
MAX_STATE = 256
