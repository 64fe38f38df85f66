"""Zamba2 (`model_type` "zamba2"): Mamba-2 mixers, run by Mamba-2's forward (the same fused kernel with LoRA
folded into out_proj, the same gated RMSNorm after the scan, no multiplier Mamba-2 lacks), and shared transformer
blocks on the hybrid layers, which run as the model's own modules.

The shared blocks: transformers builds one block per hybrid layer and ties the parameters of the layers that
use the same block, so peft wraps each layer's copy with an adapter of its own; lora_fold.share_tied_adapters
gives each shared weight one adapter again (trained by every use, and merged into that weight once)."""

from typing import Any

from torch import nn
from transformers import Zamba2Config, Zamba2ForCausalLM
from transformers.models.zamba2.modeling_zamba2 import Zamba2HybridLayer, Zamba2MambaMixer

from app.families.family import CONV_KERNEL, EXPAND, ModelShape
from app.families.mamba2 import HEAD_DIM
from app.families.zamba2 import hybrid_layers
from worker.engine.families.family import hybrid_engine
from worker.engine.families.mamba2 import CHUNK_SIZE
from worker.engine.families.mamba2 import ENGINE as MAMBA2


def build_config(shape: ModelShape, vocab_size: int, ids: dict[str, Any]) -> Zamba2Config:
    o, hybrid = shape.options, set(hybrid_layers(shape))
    mixers = {
        "mamba_d_state": shape.d_state,
        "mamba_d_conv": CONV_KERNEL,
        "mamba_expand": EXPAND,
        "mamba_ngroups": 1,
        "n_mamba_heads": EXPAND * shape.d_model // HEAD_DIM,
        "chunk_size": CHUNK_SIZE,
    }
    return Zamba2Config(
        vocab_size=vocab_size,
        hidden_size=shape.d_model,
        num_hidden_layers=shape.n_layer,
        # "mamba" and "hybrid": the names both transformers 5.17 and 5.24 read (5.24 renames "mamba" itself).
        layers_block_type=["hybrid" if i in hybrid else "mamba" for i in range(shape.n_layer)],
        num_attention_heads=o["attention_heads"],
        num_key_value_heads=o["kv_heads"],
        intermediate_size=o["mlp_size"],
        num_mem_blocks=o["shared_blocks"],
        use_shared_attention_adapter=bool(o["attention_adapters"]),
        adapter_rank=o["adapter_rank"],
        use_mem_rope=True,
        tie_word_embeddings=True,
        **mixers,
        **ids,
    )


def layer_parts(block: nn.Module) -> dict[str, nn.Module]:
    if isinstance(block, Zamba2HybridLayer):
        shared = block.shared_transformer
        return {"ssm": block.mamba_decoder.mamba, "attention": shared.self_attn, "mlp": shared.feed_forward}
    return {"ssm": block.mamba}


# Mamba-2's mixer forward, Δ and scan; the model's own layer loop.
ENGINE = hybrid_engine(
    MAMBA2,
    model_type="zamba2",
    causal_lm=Zamba2ForCausalLM,
    mixers=(Zamba2MambaMixer,),
    final_norm=lambda backbone: backbone.final_layernorm,
    layer_parts=layer_parts,
    # The mixer's gated norm, the layers' and the shared blocks' norms, the final one.
    norm_weights=("norm.weight", "input_layernorm.weight", "pre_ff_layernorm.weight", "final_layernorm.weight"),
    d_inner=lambda config: config.n_mamba_heads * config.mamba_headdim,
    build_config=build_config,
    d_state=lambda config: config.mamba_d_state,
)
