"""Mamba-2 (transformers' `mamba2`), with the Sparse Mamba stability constraint ST as a variant."""

from app.families.family import CONV_KERNEL, EXPAND, Family, ModelShape

HEAD_DIM = 64  # as the reference checkpoints: a random-init model has EXPAND · d_model / HEAD_DIM heads, one group


def mixer_parameters(d_model: int, d_state: int) -> int:
    """One Mamba-2 mixer of a random-init model (Zamba2's mixers are the same)."""
    d_inner = EXPAND * d_model
    heads = d_inner // HEAD_DIM
    conv_dim = d_inner + 2 * d_state  # one group
    return (
        d_model * (2 * d_inner + 2 * d_state + heads)  # in_proj: gate, x, B, C, dt
        + conv_dim * (CONV_KERNEL + 1)
        + 3 * heads  # dt_bias, A_log, D
        + d_inner  # gated RMSNorm
        + d_inner * d_model  # out_proj
    )


def parameter_count(shape: ModelShape, vocab_rows: int) -> int:
    d_model = shape.d_model
    layer = mixer_parameters(d_model, shape.d_state) + d_model  # the block's RMSNorm
    return vocab_rows * d_model + shape.n_layer * layer + d_model  # tied embeddings, layers, final norm


MAMBA2 = Family(
    model_type="mamba2",
    lora_targets=("in_proj", "out_proj", "embeddings", "lm_head"),
    default_targets=("in_proj", "out_proj"),
    kernel_read_targets=frozenset({"out_proj"}),
    ssm_params=("A_log", "D", "dt_bias"),
    variant_field="a_constraint",
    variants=("none", "stable"),
    hub_marks=("mamba2", "mamba-2"),
    parameter_count=parameter_count,
    d_model_multiple=HEAD_DIM // EXPAND,
    d_model_rule=f"its {EXPAND}·d_model channels form heads of {HEAD_DIM}, as in the reference Mamba-2 checkpoints",
)
