"""Falcon-H1 (transformers' `falcon_h1`): every block runs a Mamba-2 mixer and self-attention side by side on
the same normed input, then an MLP, with muP multipliers on the way in and out of each."""

from app.families.family import CONV_KERNEL, EXPAND, ModelShape, Option, ShapeError, hybrid
from app.families.mamba2 import MAMBA2

# The SSM's gated RMSNorm before out_proj (the config's `mamba_rms_norm`): the released checkpoints have none.
SSM_NORMS = ("none", "gated")

OPTIONS = (
    Option("attention_heads", 4, "the attention heads of every block; they split d_model into heads of an even size"),
    Option("kv_heads", 2, "the key/value heads (grouped-query attention); they divide attention_heads"),
    Option("mlp_size", 64, "the MLP's intermediate size"),
    Option("ssm_heads", 4, f"the Mamba-2 mixer's heads; they divide its {EXPAND}·d_model channels"),
    Option("ssm_norm", SSM_NORMS[0], "the Mamba-2 mixer's output norm: none, or gated RMSNorm", pattern="none|gated"),
)


def check_shape(shape: ModelShape) -> None:
    heads, kv_heads, ssm_heads = (shape.options[n] for n in ("attention_heads", "kv_heads", "ssm_heads"))
    if shape.d_model % heads or (shape.d_model // heads) % 2:
        raise ShapeError(
            "options.attention_heads",
            f"options.attention_heads ({heads}) must split d_model ({shape.d_model}) into heads of an even size "
            "(rotary embeddings rotate pairs of channels)",
        )
    if heads % kv_heads:
        raise ShapeError("options.kv_heads", f"options.kv_heads ({kv_heads}) must divide attention_heads ({heads})")
    if (EXPAND * shape.d_model) % ssm_heads:
        raise ShapeError(
            "options.ssm_heads",
            f"options.ssm_heads ({ssm_heads}) must divide the mixer's {EXPAND}·d_model = {EXPAND * shape.d_model} "
            "channels",
        )


def parameter_count(shape: ModelShape, vocab_rows: int) -> int:
    d_model, d_state, options = shape.d_model, shape.d_state, shape.options
    d_inner, ssm_heads = EXPAND * d_model, options["ssm_heads"]
    conv_dim = d_inner + 2 * d_state  # one group
    mixer = (
        d_model * (d_inner + conv_dim + ssm_heads)  # in_proj: gate, x, B, C, dt
        + conv_dim * (CONV_KERNEL + 1)
        + 3 * ssm_heads  # dt_bias, A_log, D
        + (d_inner if options["ssm_norm"] == "gated" else 0)
        + d_inner * d_model  # out_proj
    )
    head_dim = d_model // options["attention_heads"]
    attention = 2 * d_model * d_model + 2 * d_model * options["kv_heads"] * head_dim  # q, o; k, v
    mlp = 3 * d_model * options["mlp_size"]  # gate, up, down
    layer = mixer + attention + mlp + 2 * d_model  # the input and pre-MLP RMSNorms
    return vocab_rows * d_model + shape.n_layer * layer + d_model  # tied embeddings, layers, final norm


MIXER_TARGETS = ("in_proj", "out_proj")
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")

FALCON_H1 = hybrid(
    "falcon_h1",
    mixer=MAMBA2,
    layer_targets=(*MIXER_TARGETS, *ATTENTION_TARGETS, *MLP_TARGETS),
    hub_marks=("falcon-h1", "falcon_h1", "falconh1"),
    parameter_count=parameter_count,
    options=OPTIONS,
    check_shape=check_shape,
)
