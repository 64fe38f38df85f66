"""Zamba2 (transformers' `zamba2`): Mamba-2 layers, some of them hybrid: a transformer block (attention and a
gated MLP, on the layer's input joined with the embeddings) runs before their mixer. The transformer blocks
are shared: `shared_blocks` of them, cycled over the hybrid layers, each use with small adapters of its own
(Zamba2's, part of the base model)."""

from app.families.family import ModelShape, Option, ShapeError, hybrid
from app.families.mamba2 import HEAD_DIM, MAMBA2, mixer_parameters
from app.families.nemotron_h import block_pattern

MAMBA, HYBRID = "M", "H"

OPTIONS = (
    Option(
        "layer_pattern",
        MAMBA + HYBRID,
        "the layers' kinds, one character each (M Mamba-2, H hybrid: the shared attention and MLP block, then"
        " Mamba-2), repeated or cut to n_layer",
        pattern=r"[MH]{1,1024}",
    ),
    Option("attention_heads", 4, "attention heads of the shared blocks, over 2·d_model channels"),
    Option("kv_heads", 4, "key and value heads; they divide attention_heads (and equal it with attention_adapters)"),
    Option("mlp_size", 128, "the hidden width of the shared blocks' MLP"),
    Option("shared_blocks", 1, "distinct shared attention and MLP blocks, used in turn by the hybrid layers", high=64),
    Option("attention_adapters", 1, "1: each use of a shared block adds Zamba2's own q, k, v adapters", 0, 1),
    Option("adapter_rank", 8, "rank of Zamba2's own per-use adapters in the shared blocks", high=4096),
)


def hybrid_layers(shape: ModelShape) -> list[int]:
    """The hybrid layers' indices, in order."""
    return [i for i, kind in enumerate(block_pattern(shape)) if kind == HYBRID]


def check_shape(shape: ModelShape) -> None:
    options = shape.options
    heads, kv_heads = options["attention_heads"], options["kv_heads"]
    # The attention reads 2·d_model channels (the layer's input joined with the embeddings), in heads of
    # 2·d_model / heads: even, as RoPE rotates channel pairs.
    if shape.d_model % heads:
        message = f"options.attention_heads must divide d_model ({shape.d_model}): heads of an even width"
        raise ShapeError("options.attention_heads", message)
    if heads % kv_heads:
        raise ShapeError("options.kv_heads", "options.kv_heads must divide options.attention_heads")
    # Zamba2's k and v adapters are as wide as the attention's input, so they fit no fewer key-value heads.
    if options["attention_adapters"] and kv_heads != heads:
        message = "options.kv_heads must equal options.attention_heads with options.attention_adapters 1"
        raise ShapeError("options.kv_heads", message)
    # mamba-ssm's convolution reads its 2·d_model + 2·d_state channels in vectors of 8.
    if shape.d_state % 4:
        raise ShapeError("d_state", "d_state must be a multiple of 4 for Zamba2 (the fused convolution's layout)")


def parameter_count(shape: ModelShape, vocab_rows: int) -> int:
    options, d_model = shape.options, shape.d_model
    hybrid = len(hybrid_layers(shape))
    rank, mlp = options["adapter_rank"], options["mlp_size"]
    head_dim = 2 * d_model // options["attention_heads"]
    kv = options["kv_heads"] * head_dim
    attention = 2 * d_model * (2 * d_model + 2 * kv) + 2 * d_model * d_model  # q, k, v on 2·d_model; o
    block = attention + d_model * 3 * mlp + 3 * d_model  # gate_up and down; the norms on 2·d_model and d_model
    # Each use of a shared block has its own adapters: on gate_up, and on q, k and v when asked for.
    uses = d_model * rank + rank * 2 * mlp + options["attention_adapters"] * 3 * 2 * (2 * d_model * rank)
    layers = shape.n_layer * (mixer_parameters(d_model, shape.d_state, HEAD_DIM) + d_model)  # mixers and their norms
    shared = min(options["shared_blocks"], hybrid) * block + hybrid * (uses + d_model * d_model)  # + `linear`
    return vocab_rows * d_model + layers + shared + d_model  # tied embeddings, layers, blocks, final norm


# Every layer type: the mixers, the shared blocks' attention and MLP, and each hybrid layer's `linear` (its own
# projection of the shared block's output).
DEFAULT_TARGETS = ("in_proj", "out_proj", "q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj", "linear")

ZAMBA2 = hybrid(
    "zamba2",
    mixer=MAMBA2,
    layer_targets=DEFAULT_TARGETS,
    hub_marks=("zamba2",),
    parameter_count=parameter_count,
    d_model_multiple=MAMBA2.d_model_multiple,
    d_model_rule=MAMBA2.d_model_rule,
    options=OPTIONS,
    check_shape=check_shape,
)
