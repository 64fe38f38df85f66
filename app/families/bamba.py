"""Bamba (transformers' `bamba`, IBM): Mamba-2 mixers with self-attention in the layers `attn_layer_indices`
names, and a dense gated MLP after the mixer or the attention of every layer."""

from app.families.family import EXPAND, ModelShape, Option, ShapeError, hybrid
from app.families.mamba2 import MAMBA2, mixer_parameters

MAMBA, ATTENTION = "M", "*"
# Half of each attention head's channels rotate (transformers hardcodes partial_rotary_factor 0.5), in pairs.
ROTARY_MULTIPLE = 4

OPTIONS = (
    Option(
        "layer_pattern",
        MAMBA + ATTENTION + MAMBA + MAMBA,
        "the layers' kinds, one character each (M Mamba-2, * attention), repeated or cut to n_layer; "
        "every layer also has an MLP",
        pattern=r"[M*]{1,1024}",
    ),
    Option("attention_heads", 4, "query heads of an attention layer; they divide d_model"),
    Option("kv_heads", 2, "key and value heads of an attention layer; they divide attention_heads"),
    Option("mlp_size", 64, "the hidden width of every layer's gated MLP"),
    Option("mamba_head_dim", 16, f"channels of a Mamba-2 head; it divides the {EXPAND}·d_model mixer channels"),
    Option("mamba_groups", 1, "B and C groups of a Mamba-2 mixer; they divide its heads"),
)


def attention_layers(shape: ModelShape) -> list[int]:
    """The indices of the attention layers: the layer pattern repeated or cut to n_layer (so the default,
    which holds both kinds from two layers on, suits any depth)."""
    pattern = str(shape.options["layer_pattern"])
    return [i for i, kind in enumerate((pattern * shape.n_layer)[: shape.n_layer]) if kind == ATTENTION]


def mamba_heads(shape: ModelShape) -> int:
    return EXPAND * shape.d_model // int(shape.options["mamba_head_dim"])


def check_shape(shape: ModelShape) -> None:
    o, d_model = shape.options, shape.d_model
    attention = attention_layers(shape)
    if len(attention) == shape.n_layer:
        raise ShapeError("options.layer_pattern", f"options.layer_pattern gives no Mamba-2 layer ({MAMBA})")
    heads = int(o["attention_heads"])
    if attention and (d_model % heads or (d_model // heads) % ROTARY_MULTIPLE):
        message = (
            f"options.attention_heads must divide d_model ({d_model}) into heads of a multiple of "
            f"{ROTARY_MULTIPLE} channels (half of each head rotates, in pairs)"
        )
        raise ShapeError("options.attention_heads", message)
    if heads % int(o["kv_heads"]):
        raise ShapeError("options.kv_heads", "options.kv_heads must divide options.attention_heads")
    if EXPAND * d_model % int(o["mamba_head_dim"]):
        raise ShapeError("options.mamba_head_dim", f"options.mamba_head_dim must divide {EXPAND}·d_model")
    if mamba_heads(shape) % int(o["mamba_groups"]):
        raise ShapeError("options.mamba_groups", "options.mamba_groups must divide the Mamba-2 heads")


def parameter_count(shape: ModelShape, vocab_rows: int) -> int:
    o, d_model = {k: int(v) for k, v in shape.options.items() if k != "layer_pattern"}, shape.d_model
    head_dim = d_model // o["attention_heads"]
    attention = 2 * d_model * (o["attention_heads"] + o["kv_heads"]) * head_dim  # q and o, k and v
    mixer = mixer_parameters(d_model, shape.d_state, o["mamba_head_dim"], o["mamba_groups"])
    n_attention = len(attention_layers(shape))
    mlp = 3 * d_model * o["mlp_size"]  # gate, up, down
    layers = n_attention * attention + (shape.n_layer - n_attention) * mixer + shape.n_layer * (mlp + 2 * d_model)
    return vocab_rows * d_model + layers + d_model  # tied embeddings, layers (and their two norms), final norm


# Every projection of every layer kind: the Mamba-2 mixer's, attention's and the MLP's.
LAYER_TARGETS = ("in_proj", "out_proj", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

BAMBA = hybrid(
    "bamba",
    mixer=MAMBA2,
    layer_targets=LAYER_TARGETS,
    hub_marks=("bamba",),
    parameter_count=parameter_count,
    options=OPTIONS,
    check_shape=check_shape,
)
