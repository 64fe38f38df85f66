"""Nemotron-H (transformers' `nemotron_h`): a stack whose every block is one of a Mamba-2 mixer (M),
self-attention (*), a dense MLP (-) or a mixture of experts (E), as its `hybrid_override_pattern` says."""

from app.families.family import CONV_KERNEL, EXPAND, ModelShape, Option, ShapeError, hybrid
from app.families.mamba2 import MAMBA2

MAMBA, ATTENTION, MLP, EXPERTS = "M", "*", "-", "E"

OPTIONS = (
    Option(
        "layer_pattern",
        MAMBA + ATTENTION + MLP + EXPERTS,
        "the blocks' kinds, one character each (M Mamba-2, * attention, - MLP, E experts), repeated or cut to n_layer",
        pattern=r"[M*\-E]{1,1024}",
    ),
    Option("attention_heads", 2, "query heads of an attention block"),
    Option("kv_heads", 1, "key and value heads of an attention block; they divide attention_heads"),
    Option("head_dim", 16, "channels of an attention head"),
    Option("mlp_size", 64, "the hidden width of an MLP block"),
    # The router picks each token's experts from the top two scores of every expert group: two at least.
    Option("experts", 4, "routed experts of an experts block", low=2),
    Option("experts_per_token", 2, "experts each token is routed to; at most experts"),
    Option("expert_size", 32, "the hidden width of a routed expert"),
    Option("shared_expert_size", 32, "the hidden width of the expert every token goes through"),
    Option("mamba_head_dim", 16, f"channels of a Mamba-2 head; it divides the {EXPAND}·d_model mixer channels"),
    Option("mamba_groups", 1, "B and C groups of a Mamba-2 mixer; they divide its heads"),
)


def block_pattern(shape: ModelShape) -> str:
    """One character per block: the layer pattern repeated or cut to n_layer blocks (so the default, which
    holds every kind in four blocks, suits any depth)."""
    pattern = str(shape.options["layer_pattern"])
    return (pattern * shape.n_layer)[: shape.n_layer]


def mamba_heads(shape: ModelShape) -> int:
    return EXPAND * shape.d_model // int(shape.options["mamba_head_dim"])


def check_shape(shape: ModelShape) -> None:
    o = shape.options
    if MAMBA not in block_pattern(shape):
        raise ShapeError("options.layer_pattern", f"options.layer_pattern gives no Mamba-2 block ({MAMBA})")
    if int(o["attention_heads"]) % int(o["kv_heads"]):
        raise ShapeError("options.kv_heads", "options.kv_heads must divide options.attention_heads")
    if int(o["experts_per_token"]) > int(o["experts"]):
        raise ShapeError("options.experts_per_token", "options.experts_per_token must be at most options.experts")
    if EXPAND * shape.d_model % int(o["mamba_head_dim"]):
        raise ShapeError("options.mamba_head_dim", f"options.mamba_head_dim must divide {EXPAND}·d_model")
    if mamba_heads(shape) % int(o["mamba_groups"]):
        raise ShapeError("options.mamba_groups", "options.mamba_groups must divide the Mamba-2 heads")


def parameter_count(shape: ModelShape, vocab_rows: int) -> int:
    o, d_model = {k: int(v) for k, v in shape.options.items() if k != "layer_pattern"}, shape.d_model
    d_inner, heads = EXPAND * d_model, mamba_heads(shape)
    b_and_c = 2 * o["mamba_groups"] * shape.d_state
    attention_width = o["attention_heads"] * o["head_dim"]
    block = {
        MAMBA: (
            d_model * (2 * d_inner + b_and_c + heads)  # in_proj: gate, x, B, C, dt
            + (d_inner + b_and_c) * (CONV_KERNEL + 1)
            + 3 * heads  # dt_bias, A_log, D
            + d_inner  # gated RMSNorm
            + d_inner * d_model  # out_proj
        ),
        ATTENTION: 2 * d_model * attention_width + 2 * d_model * o["kv_heads"] * o["head_dim"],  # q, o; k, v
        MLP: 2 * d_model * o["mlp_size"],  # up, down
        EXPERTS: (
            o["experts"] * 2 * d_model * o["expert_size"]  # routed experts' up, down
            + o["experts"] * d_model  # the router
            + 2 * d_model * o["shared_expert_size"]
        ),
    }
    layers = sum(block[kind] + d_model for kind in block_pattern(shape))  # each with its RMSNorm
    return 2 * vocab_rows * d_model + layers + d_model  # untied embeddings and head, layers, final norm


EXPERT_TARGETS = ("experts.up_proj", "experts.down_proj")
LAYER_TARGETS = ("in_proj", "out_proj", "q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj")

NEMOTRON_H = hybrid(
    "nemotron_h",
    mixer=MAMBA2,
    # up_proj / down_proj: the MLP blocks' and the shared expert's; experts.*: the routed experts' 3-D weights.
    layer_targets=LAYER_TARGETS,
    expert_targets=EXPERT_TARGETS,
    embedding="embeddings",
    hub_marks=("nemotron-h", "nemotron_h", "nemotron-nano", "nemotron-3"),
    parameter_count=parameter_count,
    options=OPTIONS,
    check_shape=check_shape,
)
