"""What the service knows of a model family without torch: one `Family` per family, in its own module here."""

from collections.abc import Callable
from dataclasses import dataclass

# What every family's random-init model shares (the engine builds them so; the parameter counts rely on it).
EXPAND = 2  # d_inner = EXPAND · d_model
CONV_KERNEL = 4  # the causal convolution's width (with a bias)


@dataclass(frozen=True)
class ModelShape:
    """A random-init model's size, as POST /v1/models asks for it; `variant` None leaves the config's default."""

    d_model: int
    n_layer: int
    d_state: int
    variant: str | None = None


def padded_vocab(vocab_size: int) -> int:
    """The embedding rows of a model whose tokenizer has `vocab_size` tokens (kernel-friendly multiple of 8)."""
    return -(-vocab_size // 8) * 8


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
    # The parameters of the random-init model of (shape, embedding rows) the engine builds, counted without
    # torch; tests/sparse/test_model_parameters.py holds it to the built model's count.
    parameter_count: Callable[[ModelShape, int], int]
    # A random-init model's d_model must be a multiple of this (Mamba-2: its channels form whole heads),
    # and why, for the API's 400.
    d_model_multiple: int = 1
    d_model_rule: str = ""

    def __post_init__(self) -> None:
        targets = set(self.lora_targets)
        if not (set(self.default_targets) <= targets and self.kernel_read_targets <= targets):
            raise ValueError(f"{self.model_type}: default and kernel-read targets must be LoRA targets")
