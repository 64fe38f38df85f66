"""Bamba (transformers' `bamba`, IBM): Mamba-2 mixers with self-attention in the layers `attn_layer_indices`
names, and a dense gated MLP after the mixer or the attention of every layer."""

from app.families.family import EXPAND, Family, ModelShape, Option, ShapeError
from app.families.mamba2 import MAMBA2, mixer_parameters

# Half of each attention head's channels rotate (transformers hardcodes partial_rotary_factor 0.5), in pairs.
ROTARY_MULTIPLE = 4

OPTIONS = (
    Option(
        "attention_layers",
        "1",
        "comma-separated indices of the attention layers; the others are Mamba-2 layers",
        pattern=r"(\d+(,\d+)*)?",
    ),
    Option("attention_heads", 4, "query heads of an attention layer; they divide d_model"),
    Option("kv_heads", 2, "key/value heads of an attention layer; they divide attention_heads"),
    Option("mlp_size", 64, "the intermediate size of every layer's gated MLP"),
    Option("mamba_head_dim", 16, "channels of a Mamba-2 head; they divide the mixer's 2·d_model channels"),
)


def attention_layers(shape: ModelShape) -> list[int]:
    """The indices of the attention layers, in order."""
    text = str(shape.options["attention_layers"])
    return sorted(int(i) for i in text.split(",")) if text else []


def check_shape(shape: ModelShape) -> None:
    options, d_model = shape.options, shape.d_model
    indices = attention_layers(shape)
    if len(set(indices)) != len(indices) or any(i >= shape.n_layer for i in indices):
        message = f"options.attention_layers must name distinct layers below n_layer ({shape.n_layer})"
        raise ShapeError("options.attention_layers", message)
    if len(indices) == shape.n_layer:
        raise ShapeError("options.attention_layers", "a Bamba model needs at least one Mamba-2 layer")
    heads, kv_heads = int(options["attention_heads"]), int(options["kv_heads"])
    if d_model % heads or (d_model // heads) % ROTARY_MULTIPLE:
        message = (
            f"options.attention_heads must divide d_model ({d_model}) into heads of a multiple of "
            f"{ROTARY_MULTIPLE} channels (half of each head rotates, in pairs)"
        )
        raise ShapeError("options.attention_heads", message)
    if heads % kv_heads:
        raise ShapeError("options.kv_heads", f"options.kv_heads must divide options.attention_heads ({heads})")
    if (EXPAND * d_model) % int(options["mamba_head_dim"]):
        channels = EXPAND * d_model
        message = f"options.mamba_head_dim must divide the Mamba-2 mixer's {EXPAND}·d_model ({channels}) channels"
        raise ShapeError("options.mamba_head_dim", message)


def parameter_count(shape: ModelShape, vocab_rows: int) -> int:
    options, d_model = shape.options, shape.d_model
    heads, kv_heads = int(options["attention_heads"]), int(options["kv_heads"])
    head_dim = d_model // heads
    attention = 2 * d_model * (heads + kv_heads) * head_dim  # q and o, k and v (no biases)
    mixer = mixer_parameters(d_model, shape.d_state, int(options["mamba_head_dim"]))
    n_attention = len(attention_layers(shape))
    mlp = 3 * d_model * int(options["mlp_size"])  # gate, up, down
    layers = n_attention * attention + (shape.n_layer - n_attention) * mixer + shape.n_layer * (mlp + 2 * d_model)
    return vocab_rows * d_model + layers + d_model  # tied embeddings, layers (and their two norms), final norm


# Every projection of every layer kind: the Mamba-2 mixer's, attention's and the MLP's.
LAYER_TARGETS = ("in_proj", "out_proj", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

BAMBA = Family(
    model_type="bamba",
    lora_targets=(*LAYER_TARGETS, "embed_tokens", "lm_head"),
    default_targets=LAYER_TARGETS,
    kernel_read_targets=MAMBA2.kernel_read_targets,
    ssm_params=MAMBA2.ssm_params,
    # The Sparse Mamba constraint is Mamba-2's own forward; Bamba has the stock A only.
    variant_field=MAMBA2.variant_field,
    variants=MAMBA2.variants[:1],
    hub_marks=("bamba",),
    parameter_count=parameter_count,
    options=OPTIONS,
    check_shape=check_shape,
)
