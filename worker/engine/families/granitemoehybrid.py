"""IBM Granite 4.0-H (`model_type` "granitemoehybrid"): its Mamba-2 mixer is Mamba-2's (the same projections,
gated RMSNorm and scan, no multipliers of its own), so it takes Mamba-2's forward. The model's own layer loop
applies Granite's embedding, residual and attention multipliers, the trainer's loss its logits' (`logits_scale`);
attention, the shared MLP and the experts are plain modules LoRA wraps (the experts' 3-D weights through peft's
`target_parameters`)."""

from typing import Any

from torch import nn
from transformers import GraniteMoeHybridConfig, GraniteMoeHybridForCausalLM
from transformers.models.granitemoehybrid.modeling_granitemoehybrid import GraniteMoeHybridMambaLayer

from app.families.family import CONV_KERNEL, EXPAND, ModelShape
from app.families.granitemoehybrid import MAMBA, layer_kinds
from worker.engine.families.family import hybrid_engine
from worker.engine.families.mamba2 import CHUNK_SIZE
from worker.engine.families.mamba2 import ENGINE as MAMBA2

# μP-style multipliers away from 1, of the size Granite's checkpoints use, so a random-init model runs each of them.
EMBEDDING_MULTIPLIER = 12.0
RESIDUAL_MULTIPLIER = 0.22
LOGITS_SCALING = 8.0


def layer_parts(block: nn.Module) -> dict[str, nn.Module]:
    """A decoder layer: a Mamba-2 mixer or attention, then the shared MLP and (with experts) the mixture."""
    mixer = {"ssm": block.mamba} if block.mamba is not None else {"attention": block.self_attn}
    moe = {"moe": block.block_sparse_moe} if block.block_sparse_moe is not None else {}
    return {**mixer, "mlp": block.shared_mlp, **moe}


def build_config(shape: ModelShape, vocab_size: int, ids: dict[str, Any]) -> GraniteMoeHybridConfig:
    options = shape.options
    d_model, heads = shape.d_model, int(options["attention_heads"])
    head_dim = int(options["mamba_head_dim"])
    return GraniteMoeHybridConfig(
        vocab_size=vocab_size,
        hidden_size=d_model,
        num_hidden_layers=shape.n_layer,
        # The legacy names, which every transformers version reads (newer ones map them to their own).
        layer_types=["mamba" if kind == MAMBA else "attention" for kind in layer_kinds(shape)],
        num_attention_heads=heads,
        num_key_value_heads=int(options["kv_heads"]),
        attention_multiplier=heads / d_model,  # 1 / head_dim, as the checkpoints
        embedding_multiplier=EMBEDDING_MULTIPLIER,
        residual_multiplier=RESIDUAL_MULTIPLIER,
        logits_scaling=LOGITS_SCALING,
        position_embedding_type="nope",  # Granite 4.0-H's attention has no positional embedding
        shared_intermediate_size=int(options["mlp_size"]),
        num_local_experts=int(options["experts"]),
        num_experts_per_tok=int(options["experts_per_token"]),
        intermediate_size=int(options["expert_size"]),
        mamba_d_state=shape.d_state,
        mamba_n_heads=EXPAND * d_model // head_dim,
        mamba_d_head=head_dim,
        mamba_n_groups=1,
        mamba_d_conv=CONV_KERNEL,
        mamba_expand=EXPAND,
        mamba_chunk_size=CHUNK_SIZE,
        tie_word_embeddings=True,
        **ids,
    )


# Mamba-2's mixer forward, Δ and scan around Granite's model and layer loop.
ENGINE = hybrid_engine(
    MAMBA2,
    model_type="granitemoehybrid",
    causal_lm=GraniteMoeHybridForCausalLM,
    mixers=(GraniteMoeHybridMambaLayer,),
    final_norm=lambda backbone: backbone.norm,
    layer_parts=layer_parts,
    # The mixer's gated norm, each layer's two RMSNorms, the final norm.
    norm_weights=("norm.weight", "input_layernorm.weight", "post_attention_layernorm.weight"),
    d_inner=lambda config: config.mamba_n_heads * config.mamba_d_head,
    d_state=lambda config: config.mamba_d_state,
    logits_scale=lambda config: 1 / config.logits_scaling,
    build_config=build_config,
)
