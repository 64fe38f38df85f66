"""Mamba (transformers' `mamba`), with the Sparse Mamba state structures SC and SO as variants."""

import math

from app.families.family import CONV_KERNEL, EXPAND, Family, ModelShape

# SC/SO Mamba: the companion structures.
COMPANION_STRUCTURES = frozenset({"controllable", "observable"})
# A companion state is diagonalized through its roots, in conjugate pairs (so d_state is even); the
# Vandermonde matrix of the roots conditions worse as d_state grows, hence the lower ceiling.
MAX_COMPANION_STATE = 16


def dt_rank(d_model: int) -> int:
    """The rank of a Mamba mixer's dt projection, as transformers' "auto" sets it."""
    return math.ceil(d_model / 16)


def mixer_parameter_count(d_model: int, d_state: int, b_and_c: int) -> int:
    """A Mamba mixer's parameters; `b_and_c`: the x_proj rows that make B and C (2·d_state for the stock mixer)."""
    d_inner = EXPAND * d_model
    rank = dt_rank(d_model)
    return (
        d_model * 2 * d_inner  # in_proj
        + d_inner * (CONV_KERNEL + 1)  # conv1d weight and bias
        + d_inner * (rank + b_and_c)  # x_proj
        + (rank + 1) * d_inner  # dt_proj weight and bias
        + d_inner * d_state  # A (or its roots: the same count)
        + d_inner  # D
        + d_inner * d_model  # out_proj
    )


def parameter_count(shape: ModelShape, vocab_rows: int) -> int:
    d_model, d_state = shape.d_model, shape.d_state
    b_and_c = d_state if shape.variant in COMPANION_STRUCTURES else 2 * d_state  # SC/SO fix one of them
    layer = mixer_parameter_count(d_model, d_state, b_and_c) + d_model  # and the block's RMSNorm
    return vocab_rows * d_model + shape.n_layer * layer + d_model  # tied embeddings, layers, final norm


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
    parameter_count=parameter_count,
)
