"""Bamba (`model_type` "bamba"): its Mamba-2 mixers take Mamba-2's forward as they are. Their fused branch calls
`mamba_split_conv1d_scan_combined` with the arguments Mamba-2's does (the gated RMSNorm over d_inner / n_groups
channels after the scan, no multipliers), reading out_proj's raw weight, so ours folds LoRA into it there; the
model's own torch forward calls in_proj and out_proj as modules. Attention and the MLPs are the model's own
modules and layer loop, where LoRA applies as it is."""

from typing import Any

from torch import nn
from transformers import BambaConfig, BambaForCausalLM
from transformers.models.bamba.modeling_bamba import BambaMixer

from app.families.bamba import attention_layers, mamba_heads
from app.families.family import CONV_KERNEL, EXPAND, ModelShape
from worker.engine.families.family import hybrid_engine
from worker.engine.families.mamba2 import CHUNK_SIZE
from worker.engine.families.mamba2 import ENGINE as MAMBA2


def layer_parts(block: nn.Module) -> dict[str, nn.Module]:
    """A decoder layer is a Mamba-2 mixer or self-attention, then an MLP."""
    first = {"ssm": block.mamba} if hasattr(block, "mamba") else {"attention": block.self_attn}
    return {**first, "mlp": block.feed_forward}


def build_config(shape: ModelShape, vocab_size: int, ids: dict[str, Any]) -> BambaConfig:
    options = shape.options
    mixer = {
        "n_heads": mamba_heads(shape),
        "d_head": int(options["mamba_head_dim"]),
        "n_groups": int(options["mamba_groups"]),
        "d_state": shape.d_state,
        "d_conv": CONV_KERNEL,
        "expand": EXPAND,
        "chunk_size": CHUNK_SIZE,
    }
    # These field names are the same in transformers 5.17 and 5.24.
    return BambaConfig(
        vocab_size=vocab_size,
        tie_word_embeddings=True,
        hidden_size=shape.d_model,
        num_hidden_layers=shape.n_layer,
        attn_layer_indices=attention_layers(shape),
        num_attention_heads=int(options["attention_heads"]),
        num_key_value_heads=int(options["kv_heads"]),
        intermediate_size=int(options["mlp_size"]),
        **{f"mamba_{name}": value for name, value in mixer.items()},
        **ids,
    )


ENGINE = hybrid_engine(
    MAMBA2,
    model_type="bamba",
    causal_lm=BambaForCausalLM,
    build_config=build_config,
    layer_parts=layer_parts,
    final_norm=lambda backbone: backbone.final_layernorm,
    # The layers' two RMSNorms, the mixer's gated RMSNorm (`mamba.norm`) and the final one.
    norm_weights=("input_layernorm.weight", "pre_ff_layernorm.weight", "norm.weight", "final_layernorm.weight"),
    # The Mamba-2 mixers, with Mamba-2's forward, Δ (dt is the last heads columns of in_proj) and scan.
    mixers=(BambaMixer,),
    d_inner=lambda config: config.mamba_n_heads * config.mamba_d_head,
    d_state=lambda config: config.mamba_d_state,
)
