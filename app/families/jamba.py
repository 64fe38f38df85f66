"""Jamba (transformers' `jamba`): Mamba-1 mixers with RMSNorms on dt, B and C, an attention layer every
`attention_period` layers and a mixture of experts in place of the MLP every `expert_period` layers."""

from app.families.family import ModelShape, Option, ShapeError, hybrid
from app.families.mamba import MAMBA, dt_rank, mixer_parameter_count

# The experts' weights are 3-D parameters (experts x out x in), not Linear modules.
EXPERT_TARGETS = ("experts.gate_up_proj", "experts.down_proj")
MIXER_TARGETS = MAMBA.default_targets
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_TARGETS = ("gate_proj", "up_proj", "down_proj")

# The tiny defaults make two layers hold every kind: 0 is Mamba with an MLP, 1 attention with experts.
OPTIONS = (
    Option("attention_period", 2, "every this many layers one is attention, the others Mamba", low=2),
    Option("attention_offset", 1, "the index of the first attention layer, below attention_period", low=0),
    Option("expert_period", 2, "every this many layers one has a mixture of experts in place of its MLP"),
    Option("expert_offset", 1, "the index of the first layer with experts, below expert_period", low=0),
    Option("attention_heads", 4, "attention heads; they divide d_model"),
    Option("kv_heads", 2, "key and value heads; they divide attention_heads"),
    Option("mlp_size", 64, "the hidden width of the MLPs and of each expert"),
    Option("experts", 4, "experts per mixture (1: MLPs only)"),
    Option("experts_per_token", 2, "experts each token is routed to, at most experts"),
)


def _int(shape: ModelShape, name: str) -> int:
    return int(shape.options[name])  # every option of this family is an int (Option.check)


def _kind(shape: ModelShape, layer: int, prefix: str) -> bool:
    """Whether `layer` is one of the periodic layers `<prefix>_layer_period` / `_offset` pick."""
    return layer % _int(shape, f"{prefix}_period") == _int(shape, f"{prefix}_offset")


def layer_kinds(shape: ModelShape) -> list[tuple[str, str]]:
    """(mixer, feed-forward) of each layer: ("ssm" | "attention", "mlp" | "moe"), as JambaConfig lays them out."""
    experts = _int(shape, "experts") > 1  # one expert is built as a plain MLP
    return [
        (
            "attention" if _kind(shape, i, "attention") else "ssm",
            "moe" if experts and _kind(shape, i, "expert") else "mlp",
        )
        for i in range(shape.n_layer)
    ]


def check_shape(shape: ModelShape) -> None:
    for prefix in ("attention", "expert"):
        if _int(shape, f"{prefix}_offset") >= _int(shape, f"{prefix}_period"):
            raise ShapeError(f"options.{prefix}_offset", f"{prefix}_offset must be below {prefix}_period")
    heads, kv_heads = _int(shape, "attention_heads"), _int(shape, "kv_heads")
    if shape.d_model % heads:
        raise ShapeError("options.attention_heads", f"attention_heads {heads} must divide d_model {shape.d_model}")
    if heads % kv_heads:
        raise ShapeError("options.kv_heads", f"kv_heads {kv_heads} must divide {heads} heads")
    if _int(shape, "experts_per_token") > _int(shape, "experts"):
        raise ShapeError("options.experts_per_token", "experts_per_token must be at most experts")
    if all(mixer == "attention" for mixer, _ in layer_kinds(shape)):
        raise ShapeError("n_layer", "a jamba model needs a Mamba layer: these layers are all attention")


def parameter_count(shape: ModelShape, vocab_rows: int) -> int:
    d_model, d_state = shape.d_model, shape.d_state
    head_dim = d_model // _int(shape, "attention_heads")
    kv_width = _int(shape, "kv_heads") * head_dim
    mlp = 3 * d_model * _int(shape, "mlp_size")  # gate, up and down projections
    parts = {
        # The mixer's RMSNorms on dt, B and C have weights.
        "ssm": mixer_parameter_count(d_model, d_state, 2 * d_state) + dt_rank(d_model) + 2 * d_state,
        "attention": 2 * d_model * d_model + 2 * d_model * kv_width,  # q and o, k and v
        "mlp": mlp,
        "moe": _int(shape, "experts") * (mlp + d_model),  # each expert and its router row
    }
    layers = sum(parts[mixer] + parts[feed_forward] + 2 * d_model for mixer, feed_forward in layer_kinds(shape))
    return vocab_rows * d_model + layers + d_model  # tied embeddings, layers with their two norms, final norm


JAMBA = hybrid(
    "jamba",
    mixer=MAMBA,
    layer_targets=(*MIXER_TARGETS, *ATTENTION_TARGETS, *MLP_TARGETS),
    expert_targets=EXPERT_TARGETS,
    ssm_params=("A_log", "D", "dt_proj.bias"),  # no Sparse Mamba roots
    hub_marks=("jamba",),
    parameter_count=parameter_count,
    options=OPTIONS,
    check_shape=check_shape,
)
