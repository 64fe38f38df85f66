"""Falcon-H1 (`model_type` "falcon_h1"): the model's own layer loop, whose blocks run a Mamba-2 mixer beside
self-attention and then an MLP. The mixer takes Mamba-2's forward through `mamba_split_conv1d_scan_combined`
(LoRA folded into out_proj) with Falcon-H1's own parts: its input scaled by `ssm_in_multiplier`, in_proj's
output by the muP vector (one multiplier per gate, x, B, C and dt segment), and the gated RMSNorm optional
(`mamba_rms_norm`), normalising before or after the gate as the model's torch forward does. The multipliers
outside the mixer (ssm_out, attention in/out, key, MLP, embedding) are the model's own loop's; the logits'
is the loss's (`logits_scale`)."""

from functools import partial
from typing import Any

from torch import Tensor, nn
from transformers import FalconH1Config, FalconH1ForCausalLM
from transformers.models.falcon_h1.modeling_falcon_h1 import FalconH1Mixer

from app.families.falcon_h1 import SSM_NORMS
from app.families.family import EXPAND, ModelShape
from worker.engine.families.family import hybrid_engine
from worker.engine.families.mamba2 import CHUNK_SIZE
from worker.engine.families.mamba2 import ENGINE as MAMBA2
from worker.engine.families.mamba2 import delta as mamba2_delta
from worker.engine.families.mamba2 import mixer_forward as mamba2_mixer_forward


def in_projection(mixer: FalconH1Mixer, hidden: Tensor) -> Tensor:
    """zxbcdt (b, l, gate + x + B + C + dt) as the model's mixer computes it, muP multipliers included, in
    in_proj's output dtype: the muP vector is a buffer, left fp32 where only the frozen weights are stored in
    bf16, and would otherwise hand the fused kernel an fp32 zxbcdt beside its bf16 weights under autocast."""
    projected = mixer.in_proj(hidden * mixer.ssm_in_multiplier)
    return projected * mixer.mup_vector.to(projected.dtype)


def gated_norm_args(mixer: FalconH1Mixer) -> dict[str, Any]:
    """The fused kernel's norm arguments: without the gated RMSNorm the scan gates y by silu(z) itself.

    With it, the order of norm and gate is the config's, as in the model's torch forward (its own fused
    branch always gates first, which differs from its torch branch when `mamba_norm_before_gate` is set)."""
    if not mixer.mamba_rms_norm:
        return {"rmsnorm_weight": None, "norm_before_gate": False}
    norm = mixer.norm
    return {
        "rmsnorm_weight": norm.weight,
        "rmsnorm_eps": norm.variance_epsilon,
        "norm_before_gate": norm.norm_before_gate,
    }


mixer_forward = partial(mamba2_mixer_forward, projection=in_projection, norm_args=gated_norm_args)
delta = partial(mamba2_delta, projection=in_projection)


def layer_parts(block: nn.Module) -> dict[str, nn.Module]:
    return {"ssm": block.mamba, "attention": block.self_attn, "mlp": block.feed_forward}


def build_config(shape: ModelShape, vocab_size: int, ids: dict[str, Any]) -> FalconH1Config:
    """The same fields on transformers 5.17 and 5.24; every muP multiplier is left at 1."""
    options = shape.options
    return FalconH1Config(
        vocab_size=vocab_size,
        hidden_size=shape.d_model,
        num_hidden_layers=shape.n_layer,
        num_attention_heads=options["attention_heads"],
        num_key_value_heads=options["kv_heads"],
        intermediate_size=options["mlp_size"],
        mamba_d_ssm=EXPAND * shape.d_model,
        mamba_n_heads=options["ssm_heads"],
        mamba_d_state=shape.d_state,
        mamba_n_groups=1,
        mamba_chunk_size=CHUNK_SIZE,
        mamba_rms_norm=options["ssm_norm"] == SSM_NORMS[1],
        mamba_norm_before_gate=False,  # as the released checkpoints, and the model's own fused branch
        tie_word_embeddings=True,
        **ids,
    )


ENGINE = hybrid_engine(
    MAMBA2,
    model_type="falcon_h1",
    causal_lm=FalconH1ForCausalLM,
    mixers=(FalconH1Mixer,),
    mixer_forward=mixer_forward,
    final_norm=lambda backbone: backbone.final_layernorm,
    layer_parts=layer_parts,
    norm_weights=("input_layernorm.weight", "pre_ff_layernorm.weight", "final_layernorm.weight", "mamba.norm.weight"),
    delta=delta,
    d_inner=lambda config: config.mamba_n_heads * config.mamba_d_head,
    build_config=build_config,
    d_state=lambda config: config.mamba_d_state,
    logits_scale=lambda config: config.lm_head_multiplier,
)
