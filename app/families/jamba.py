"""Jamba (transformers' `jamba`): Mamba-1 mixers with RMSNorms on dt, B and C, an attention layer every
`attn_layer_period` layers and a mixture of experts in place of the MLP every `expert_layer_period` layers."""

from app.families.family import Family, ModelShape, Option, ShapeError
from app.families.mamba import MAMBA, dt_rank, mixer_parameter_count

# The experts' weights are 3-D parameters (experts x out x in), not Linear modules.
EXPERT_TARGETS = ("experts.gate_up_proj", "experts.down_proj")
MIXER_TARGETS = MAMBA.default_targets
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")

# The tiny defaults make two layers hold every kind: 0 is Mamba with an MLP, 1 attention with experts.
OPTIONS = (
    Option("attn_layer_period", 2, "every this many layers one is attention, the others Mamba", low=2),
    Option("attn_layer_offset", 1, "the index of the first attention layer, below attn_layer_period", low=0),
    Option("expert_layer_period", 2, "every this many layers one has a mixture of experts in place of its MLP"),
    Option("expert_layer_offset", 1, "the index of the first layer with experts, below expert_layer_period", low=0),
    Option("num_attention_heads", 4, "attention heads; they divide d_model"),
    Option("num_key_value_heads", 2, "key and value heads; they divide num_attention_heads"),
    Option("intermediate_size", 64, "the hidden width of the MLPs and of each expert"),
    Option("num_experts", 4, "experts per mixture (1: MLPs only)"),
    Option("num_experts_per_tok", 2, "experts each token is routed to, at most num_experts"),
)


def _int(shape: ModelShape, name: str) -> int:
    return int(shape.options[name])  # every option of this family is an int (Option.check)


def _kind(shape: ModelShape, layer: int, prefix: str) -> bool:
    """Whether `layer` is one of the periodic layers `<prefix>_layer_period` / `_offset` pick."""
    return layer % _int(shape, f"{prefix}_layer_period") == _int(shape, f"{prefix}_layer_offset")


def layer_kinds(shape: ModelShape) -> list[tuple[str, str]]:
    """(mixer, feed-forward) of each layer: ("ssm" | "attention", "mlp" | "moe"), as JambaConfig lays them out."""
    experts = _int(shape, "num_experts") > 1  # one expert is built as a plain MLP
    return [
        ("attention" if _kind(shape, i, "attn") else "ssm", "moe" if experts and _kind(shape, i, "expert") else "mlp")
        for i in range(shape.n_layer)
    ]


def check_shape(shape: ModelShape) -> None:
    for prefix in ("attn", "expert"):
        if _int(shape, f"{prefix}_layer_offset") >= _int(shape, f"{prefix}_layer_period"):
            raise ShapeError(
                f"options.{prefix}_layer_offset", f"{prefix}_layer_offset must be below {prefix}_layer_period"
            )
    heads, kv_heads = _int(shape, "num_attention_heads"), _int(shape, "num_key_value_heads")
    if shape.d_model % heads:
        raise ShapeError(
            "options.num_attention_heads", f"num_attention_heads {heads} must divide d_model {shape.d_model}"
        )
    if heads % kv_heads:
        raise ShapeError("options.num_key_value_heads", f"num_key_value_heads {kv_heads} must divide {heads} heads")
    if _int(shape, "num_experts_per_tok") > _int(shape, "num_experts"):
        raise ShapeError("options.num_experts_per_tok", "num_experts_per_tok must be at most num_experts")
    if all(mixer == "attention" for mixer, _ in layer_kinds(shape)):
        raise ShapeError("n_layer", "a jamba model needs a Mamba layer: these layers are all attention")


def parameter_count(shape: ModelShape, vocab_rows: int) -> int:
    d_model, d_state = shape.d_model, shape.d_state
    head_dim = d_model // _int(shape, "num_attention_heads")
    kv_width = _int(shape, "num_key_value_heads") * head_dim
    mlp = 3 * d_model * _int(shape, "intermediate_size")  # gate, up and down projections
    parts = {
        # The mixer's RMSNorms on dt, B and C have weights.
        "ssm": mixer_parameter_count(d_model, d_state, 2 * d_state) + dt_rank(d_model) + 2 * d_state,
        "attention": 2 * d_model * d_model + 2 * d_model * kv_width,  # q and o, k and v
        "mlp": mlp,
        "moe": _int(shape, "num_experts") * (mlp + d_model),  # each expert and its router row
    }
    layers = sum(parts[mixer] + parts[feed_forward] + 2 * d_model for mixer, feed_forward in layer_kinds(shape))
    return vocab_rows * d_model + layers + d_model  # tied embeddings, layers with their two norms, final norm


JAMBA = Family(
    model_type="jamba",
    lora_targets=(*MIXER_TARGETS, *ATTENTION_TARGETS, *MLP_TARGETS, *EXPERT_TARGETS, "embed_tokens", "lm_head"),
    default_targets=(*MIXER_TARGETS, *ATTENTION_TARGETS, *MLP_TARGETS, *EXPERT_TARGETS),
    kernel_read_targets=MAMBA.kernel_read_targets,
    parameter_targets=frozenset(EXPERT_TARGETS),
    ssm_params=("A_log", "D", "dt_proj.bias"),
    variant_field=MAMBA.variant_field,
    variants=MAMBA.variants[:1],
    hub_marks=("jamba",),
    parameter_count=parameter_count,
    options=OPTIONS,
    check_shape=check_shape,
)
