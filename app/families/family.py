"""What the service knows of a model family without torch: one `Family` per family, in its own module here."""

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# What every family's random-init model shares (the engine builds them so; the parameter counts rely on it).
EXPAND = 2  # d_inner = EXPAND · d_model
CONV_KERNEL = 4  # the causal convolution's width (with a bias)


OptionValue = int | str


@dataclass(frozen=True)
class ModelShape:
    """A random-init model's size, as POST /v1/models asks for it; `variant` None leaves the config's default.
    `options`: a hybrid family's architecture fields (`Family.options`), every one given (defaults filled)."""

    d_model: int
    n_layer: int
    d_state: int
    variant: str | None = None
    options: Mapping[str, OptionValue] = field(default_factory=dict)


class ShapeError(ValueError):
    """A random-init model's shape a family cannot build; `param` names the request field (`options.<name>`)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Option:
    """An architecture field of a family beyond d_model, n_layer and d_state (attention and MLP layers,
    heads, experts), which POST /v1/models may set in `options`; the default suits a tiny model."""

    name: str
    default: OptionValue
    doc: str
    low: int = 1  # an int option's bounds, inclusive
    high: int = 1 << 16
    pattern: str = ""  # a str option's form (re.fullmatch)

    def check(self, value: object) -> OptionValue:
        """`value` if it is a valid value of this option, else ShapeError naming it."""
        param = f"options.{self.name}"
        if isinstance(self.default, int):
            if not isinstance(value, int) or isinstance(value, bool) or not self.low <= value <= self.high:
                raise ShapeError(param, f"{param} must be an integer from {self.low} to {self.high}: {self.doc}")
        elif not isinstance(value, str) or not re.fullmatch(self.pattern, value):
            raise ShapeError(param, f"{param} must match {self.pattern}: {self.doc}")
        return value


def no_shape_rule(shape: ModelShape) -> None:
    """A family whose fields have no rule between them."""


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
    # A hybrid's architecture fields beyond d_model, n_layer and d_state, with their tiny-model defaults.
    options: tuple[Option, ...] = ()
    # Targets that name a parameter, not a module ("experts.up_proj": a mixture's 3-D expert weights): peft
    # reaches them through `target_parameters`, which folds the adapter into the weight and takes no dropout.
    parameter_targets: frozenset[str] = frozenset()
    # Rules between a shape's fields (heads dividing d_model, a layer pattern n_layer long): ShapeError if broken.
    check_shape: Callable[[ModelShape], None] = no_shape_rule

    def shape(
        self, *, d_model: int, n_layer: int, d_state: int, variant: str | None, options: Mapping[str, object]
    ) -> ModelShape:
        """The shape a request asks for, its options checked and their defaults filled; ShapeError otherwise."""
        known = {option.name: option for option in self.options}
        for name in options:
            if name not in known:
                offered = ", ".join(known) or "none"
                message = f"{self.model_type} models have no option {name!r} (theirs: {offered})"
                raise ShapeError(f"options.{name}", message)
        filled = {n: option.check(options[n]) if n in options else option.default for n, option in known.items()}
        shape = ModelShape(d_model=d_model, n_layer=n_layer, d_state=d_state, variant=variant, options=filled)
        self.check_shape(shape)
        return shape

    @property
    def undroppable_targets(self) -> frozenset[str]:
        """Targets LoRA dropout cannot apply to: the kernel-read ones (their adapter is folded into the weight)
        and the parameter targets (peft's parameter LoRA has no input of its own to drop out)."""
        return self.kernel_read_targets | self.parameter_targets

    def __post_init__(self) -> None:
        targets = set(self.lora_targets)
        if not set(self.default_targets) | self.kernel_read_targets | self.parameter_targets <= targets:
            raise ValueError(f"{self.model_type}: default, kernel-read and parameter targets must be LoRA targets")


def hybrid(
    model_type: str,
    *,
    mixer: Family,
    layer_targets: tuple[str, ...],
    expert_targets: tuple[str, ...] = (),
    embedding: str = "embed_tokens",
    **fields: Any,
) -> Family:
    """A hybrid family whose SSM mixers are `mixer`'s (Mamba's or Mamba-2's): their kernel-read targets and SSM
    parameters, the stock state only (no Sparse Mamba variant), LoRA by default on every projection of every
    layer kind (`layer_targets`, and the experts' 3-D weights `expert_targets`), on the embedding and the head
    on request."""
    defaults: dict[str, Any] = {
        "lora_targets": (*layer_targets, *expert_targets, embedding, "lm_head"),
        "default_targets": (*layer_targets, *expert_targets),
        "kernel_read_targets": mixer.kernel_read_targets,
        "parameter_targets": frozenset(expert_targets),
        "ssm_params": mixer.ssm_params,
        "variant_field": mixer.variant_field,
        "variants": mixer.variants[:1],
    }
    return Family(model_type=model_type, **{**defaults, **fields})
