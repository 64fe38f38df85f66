"""IBM Granite 4.0-H (transformers' `granitemoehybrid`): Mamba-2 mixer layers and self-attention layers, each
followed by a shared (dense) MLP and, when the model has experts, a mixture of experts beside it."""

from app.families.family import CONV_KERNEL, EXPAND, ModelShape, Option, ShapeError, hybrid
from app.families.mamba2 import MAMBA2

MAMBA, ATTENTION = "M", "A"

OPTIONS = (
    # The mixer and attention layers, then which layers are which, then what follows each of them.
    Option("mamba_head_dim", 32, f"channels of a Mamba-2 head; they divide the mixer's {EXPAND}·d_model"),
    Option("attention_heads", 4, "query heads of an attention layer; they divide d_model"),
    Option("kv_heads", 2, "key/value heads of an attention layer; they divide attention_heads"),
    Option(
        "layer_pattern",
        "MA",
        f"the layers' kinds, {MAMBA} (Mamba-2 mixer) or {ATTENTION} (self-attention), repeated (or cut) to n_layer"
        " layers: granite-4.0-h-tiny is MMMMMAMMMM over 40 layers",
        pattern=f"[{MAMBA}{ATTENTION}]{{1,256}}",
    ),
    Option("mlp_size", 64, "the intermediate size of every layer's shared MLP"),
    Option("experts", 4, "experts of every layer's mixture (0: no mixture, the shared MLP alone)", low=0),
    Option("experts_per_token", 2, "experts a token is routed to; at most `experts`"),
    Option("expert_size", 32, "the intermediate size of one expert"),
)


def layer_kinds(shape: ModelShape) -> list[str]:
    """Each layer's kind (MAMBA or ATTENTION), in order: the pattern repeated to n_layer layers."""
    pattern = str(shape.options["layer_pattern"])
    return [pattern[i % len(pattern)] for i in range(shape.n_layer)]


def check_shape(shape: ModelShape) -> None:
    options = shape.options
    heads, kv_heads = int(options["attention_heads"]), int(options["kv_heads"])
    if shape.d_model % heads:
        raise ShapeError("options.attention_heads", f"attention_heads ({heads}) must divide d_model ({shape.d_model})")
    if heads % kv_heads:
        raise ShapeError("options.kv_heads", f"kv_heads ({kv_heads}) must divide attention_heads ({heads})")
    experts, per_token = int(options["experts"]), int(options["experts_per_token"])
    if experts and per_token > experts:
        raise ShapeError("options.experts_per_token", f"experts_per_token ({per_token}) exceeds experts ({experts})")
    head_dim = int(options["mamba_head_dim"])
    if EXPAND * shape.d_model % head_dim:
        message = f"mamba_head_dim ({head_dim}) must divide the Mamba-2 mixer's {EXPAND}·d_model channels"
        raise ShapeError("options.mamba_head_dim", message)


def parameter_count(shape: ModelShape, vocab_rows: int) -> int:
    d_model, d_state, options = shape.d_model, shape.d_state, shape.options
    d_inner = EXPAND * d_model
    mamba_heads = d_inner // int(options["mamba_head_dim"])
    conv_dim = d_inner + 2 * d_state  # one group
    mixer = (
        d_model * (d_inner + conv_dim + mamba_heads)  # in_proj: gate, x, B, C, dt
        + conv_dim * (CONV_KERNEL + 1)
        + 3 * mamba_heads  # dt_bias, A_log, D
        + d_inner  # gated RMSNorm
        + d_inner * d_model  # out_proj
    )
    heads, kv_heads = int(options["attention_heads"]), int(options["kv_heads"])
    head_dim = d_model // heads
    attention = 2 * d_model * heads * head_dim + 2 * d_model * kv_heads * head_dim  # q, o; k, v
    experts, expert_size = int(options["experts"]), int(options["expert_size"])
    mlp = 3 * d_model * int(options["mlp_size"])  # gate and up, down
    moe = experts * d_model + experts * 3 * d_model * expert_size  # router; gate_up and down per expert
    shared = 2 * d_model + mlp + moe  # two RMSNorms, the shared MLP, the mixture
    layers = sum(shared + (mixer if kind == MAMBA else attention) for kind in layer_kinds(shape))
    return vocab_rows * d_model + layers + d_model  # tied embeddings, layers, final norm


# The experts' weights: 3-D parameters (experts, out, in) of one module, which peft reaches as parameters.
EXPERT_TARGETS = ("experts.gate_up_proj", "experts.down_proj")

GRANITEMOEHYBRID = hybrid(
    "granitemoehybrid",
    mixer=MAMBA2,
    layer_targets=(
        *("in_proj", "out_proj"),  # the Mamba-2 mixer
        *("q_proj", "k_proj", "v_proj", "o_proj"),  # attention
        *("input_linear", "output_linear"),  # the shared MLP
    ),
    expert_targets=EXPERT_TARGETS,
    hub_marks=("granite-4.0-h", "granite-4.0-tiny", "granitemoehybrid"),
    parameter_count=parameter_count,
    options=OPTIONS,
    check_shape=check_shape,
)
