"""Nemotron-H (`model_type` "nemotron_h"): the model's own layer loop over Mamba-2, attention, MLP and
mixture-of-experts blocks. Its Mamba-2 mixer is Mamba-2's own (in_proj to gate, x, B, C and dt; a causal
convolution; a gated RMSNorm over `n_groups` groups; out_proj) with no extra multipliers, so it takes
Mamba-2's forward: `mamba_split_conv1d_scan_combined` with out_proj's LoRA folded in, which normalises per
group from its `ngroups` as transformers' own CUDA path does, or else the model's own torch forward, which
calls every projection as a module. The routed experts' adapters are peft's parameter wrappers
(lora_fold.py), which fold them into the expert weights on every path."""

from typing import Any

from torch import nn
from transformers import NemotronHConfig, NemotronHForCausalLM
from transformers.models.nemotron_h.modeling_nemotron_h import NemotronHMamba2Mixer

from app.families.family import ModelShape
from app.families.nemotron_h import block_pattern, mamba_heads
from worker.engine.families.family import hybrid_engine
from worker.engine.families.mamba2 import ENGINE as MAMBA2

# A block's single part by its `block_type`: transformers 5.24's names, and the earlier ones it remaps.
KINDS = {
    "linear_attention": "ssm",
    "mamba": "ssm",
    "full_attention": "attention",
    "attention": "attention",
    "mlp": "mlp",
    "moe": "moe",
}


def layer_parts(block: nn.Module) -> dict[str, nn.Module]:
    return {KINDS[block.block_type]: block.mixer}


def build_config(shape: ModelShape, vocab_size: int, ids: dict[str, Any]) -> NemotronHConfig:
    """The layer pattern goes in as `hybrid_override_pattern` with `num_hidden_layers`, and the mixer's groups
    as `mamba_n_groups`: the arguments of the config before transformers 5 renamed them, which 5.24 still maps
    onto its `layers_block_type` and `n_groups` (so one call builds the same model on 5.17 and 5.24, whichever
    names 5.17 has). The scan chunk is the config's own default."""
    o = shape.options
    return NemotronHConfig(
        vocab_size=vocab_size,
        hidden_size=shape.d_model,
        hybrid_override_pattern=block_pattern(shape),
        num_hidden_layers=shape.n_layer,
        ssm_state_size=shape.d_state,
        mamba_num_heads=mamba_heads(shape),
        mamba_head_dim=o["mamba_head_dim"],
        mamba_n_groups=o["mamba_groups"],
        num_attention_heads=o["attention_heads"],
        num_key_value_heads=o["kv_heads"],
        head_dim=o["head_dim"],
        intermediate_size=o["mlp_size"],
        n_routed_experts=o["experts"],
        num_experts_per_tok=o["experts_per_token"],
        moe_intermediate_size=o["expert_size"],
        moe_shared_expert_intermediate_size=o["shared_expert_size"],
        tie_word_embeddings=False,  # as the released checkpoints
        **ids,
    )


ENGINE = hybrid_engine(
    MAMBA2,
    model_type="nemotron_h",
    causal_lm=NemotronHForCausalLM,
    mixers=(NemotronHMamba2Mixer,),
    final_norm=lambda backbone: backbone.norm_f,
    layer_parts=layer_parts,
    # The blocks' and the mixers' norms, and the router's weight, which transformers keeps fp32 too.
    norm_weights=("norm.weight", "norm_f.weight", "gate.weight"),
    d_inner=lambda config: config.mamba_num_heads * config.mamba_head_dim,
    build_config=build_config,
    d_state=lambda config: config.ssm_state_size,
)
