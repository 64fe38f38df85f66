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
