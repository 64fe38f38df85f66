"""Jamba (`model_type` "jamba"): Mamba's mixer forward with the mixer's RMSNorms (with weights) on dt, B and C,
the model's own attention, MLP and experts, and the model's own layer loop.

The model's own mixer forward reads dt_proj's raw weight (`dt_proj.weight @ dt`) on every path, so a LoRA
adapter there gets no gradient: ours folds it into every weight it reads. mamba-ssm's fused mixer cannot
take Jamba's norms (it normalises dt after dt_proj, over d_inner; Jamba before, over dt_rank, with weights),
so on CUDA the projections and norms run in torch and the scan alone is mamba-ssm's kernel, its inputs cast
to one dtype (kernels.selective_scan)."""

from functools import partial
from typing import Any

from torch import Tensor, nn
from transformers import JambaConfig, JambaForCausalLM
from transformers.models.jamba.modeling_jamba import JambaMambaDecoderLayer, JambaMambaMixer

from app.families.family import CONV_KERNEL, EXPAND, ModelShape
from worker.engine.families.family import hybrid_engine
from worker.engine.families.mamba import ENGINE as MAMBA
from worker.engine.families.mamba import delta as mamba_delta
from worker.engine.families.mamba import mixer_forward as mamba_mixer_forward
from worker.engine.mixer_parts import ForwardPath


def mixer_forward(
    mixer: JambaMambaMixer,
    hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    *,
    path: ForwardPath = "auto",
    **kwargs: Any,
) -> Tensor:
    return mamba_mixer_forward(
        mixer, hidden_states, attention_mask, path=path, bcdt_norms=True, dt_norm_first=True, **kwargs
    )


def mamba_block_forward(
    block: JambaMambaDecoderLayer,
    hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    *,
    seq_idx: Tensor | None = None,
    **kwargs: Any,
) -> Tensor:
    """A Mamba block's forward that hands packed documents' `seq_idx` to its mixer, which the model's own
    drops (transformers 5.17 and 5.24 alike); without them, the model's own."""
    if seq_idx is None:
        return block.hf_forward(hidden_states, attention_mask=attention_mask, **kwargs)
    if any(kwargs.get(name) is not None for name in ("cache", "past_key_values")):
        raise ValueError("packed documents (seq_idx) run without a cache")
    hidden_states = hidden_states + block.mamba(
        block.input_layernorm(hidden_states), attention_mask=attention_mask, seq_idx=seq_idx
    )
    return hidden_states + block.feed_forward(block.pre_ff_layernorm(hidden_states))


def layer_parts(block: nn.Module) -> dict[str, nn.Module]:
    """A decoder layer's mixer (Mamba or attention) and its feed-forward (an MLP or a mixture of experts)."""
    mixer = {"ssm": block.mamba} if hasattr(block, "mamba") else {"attention": block.self_attn}
    feed_forward = block.feed_forward
    return mixer | {"moe" if hasattr(feed_forward, "experts") else "mlp": feed_forward}


# The catalog's options (named as every hybrid names them) as JambaConfig's fields, in 5.17 and 5.24 alike.
CONFIG_FIELDS = {
    "attention_period": "attn_layer_period",
    "attention_offset": "attn_layer_offset",
    "expert_period": "expert_layer_period",
    "expert_offset": "expert_layer_offset",
    "attention_heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "mlp_size": "intermediate_size",
    "experts": "num_experts",
    "experts_per_token": "num_experts_per_tok",
}


def build_config(shape: ModelShape, vocab_size: int, ids: dict[str, Any]) -> JambaConfig:
    return JambaConfig(
        vocab_size=vocab_size,
        hidden_size=shape.d_model,
        num_hidden_layers=shape.n_layer,
        mamba_d_state=shape.d_state,
        mamba_d_conv=CONV_KERNEL,
        mamba_expand=EXPAND,
        tie_word_embeddings=True,
        **{CONFIG_FIELDS[name]: value for name, value in shape.options.items()},
        **ids,
    )


ENGINE = hybrid_engine(
    MAMBA,
    model_type="jamba",
    causal_lm=JambaForCausalLM,
    mixers=(JambaMambaMixer,),
    mixer_forward=mixer_forward,
    final_norm=lambda backbone: backbone.final_layernorm,
    layer_parts=layer_parts,
    norm_weights=tuple(f"{norm}_layernorm.weight" for norm in ("input", "pre_ff", "final", "dt", "b", "c")),
    delta=partial(mamba_delta, bcdt_norms=True, dt_norm_first=True),
    d_inner=lambda config: config.mamba_expand * config.hidden_size,
    build_config=build_config,
    d_state=lambda config: config.mamba_d_state,
    block_forward=(JambaMambaDecoderLayer, mamba_block_forward),
    # Measured (bench/memory.py): Jamba's Mamba blocks hold less in backward than Mamba's 12 copies.
    scan_copies=(4, 7),
)
