"""Routing a model's SSM mixers through forwards that see LoRA on every target, on every code path.

`install_forwards(model)` replaces each mixer's `forward` with its family's (worker/engine/families/), and
a block's where the model's own would not hand its mixer packed documents' `seq_idx`.
There the fused CUDA path and the pure-torch paths sit side by side, chosen by one condition, like
mamba-ssm's `mamba_simple.py`; both read their weights through `effective_weight`, so a LoRA adapter
trains through the fused kernel and the reference path alike.

Calls with a generation cache go to the model's own recurrent forward, which reads dt_proj's raw
weight on recent transformers: merge the adapter (`lora_fold.merge_adapter`) before generating.
So that a plain `model(input_ids)` in eval mode does not ask for a cache, `install_forwards` turns
`config.use_cache` off; `generate()` still asks for one explicitly.
"""

from collections.abc import Callable
from functools import partial

from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from worker.engine import kernels
from worker.engine.families import FamilyEngine, backbone_engine, block_forward, mixer_engine
from worker.engine.mixer_parts import ForwardPath, has_cache
from worker.engine.sparse_mamba import apply_structure, route


def install_forwards(model: nn.Module, path: ForwardPath = "auto") -> nn.Module:
    """Route every SSM mixer of `model` through its family's forward (idempotent)."""
    if getattr(model, "config", None) is not None:
        model.config.use_cache = False
    apply_structure(model)  # SC / SO parameters for a model built from a structured config
    for module in model.modules():
        mixer_of, backbone_of, block_of = mixer_engine(module), backbone_engine(module), block_forward(module)
        # Keep the model's own forward once, for generation with a cache.
        if (mixer_of or backbone_of or block_of) and not hasattr(module, "hf_forward"):
            module.hf_forward = module.forward
        if mixer_of is not None:
            module.forward = route(module, partial(mixer_of.mixer_forward, module, path=path), path)
        elif backbone_of is not None:
            module.forward = partial(backbone_forward, module, engine=backbone_of, path=path)
        elif block_of is not None:
            module.forward = partial(block_of, module)
    return model


def backbone_forward(
    backbone: nn.Module,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    attention_mask: Tensor | None = None,
    *,
    engine: FamilyEngine,
    path: ForwardPath = "auto",
    seq_idx: Tensor | None = None,
    **kwargs,
) -> object:
    """The layer stack with residual-add and RMSNorm fused into one Triton kernel per layer.

    The model's own blocks cast to fp32, normalise, cast back and add the residual in separate
    kernels, each a full pass over the activations: that glue costs more GPU time than the matrix
    products. Anything unusual (a cache, per-layer hidden states) takes the model's own loop, and so does
    a call without kernels, unless it packs documents (`seq_idx` (b, l)): the model's own loop would not
    hand them to the mixers, so this loop runs with the blocks' own norms.
    """
    on_cuda = (input_ids if input_ids is not None else inputs_embeds).is_cuda
    fused = path == "auto" and kernels.rms_norm_fn is not None and on_cuda
    unusual = has_cache(kwargs) or kwargs.get("use_cache") or kwargs.get("output_hidden_states")
    if unusual and seq_idx is not None:
        raise ValueError("packed documents (seq_idx) run without a cache or per-layer hidden states")
    if unusual or not (fused or seq_idx is not None):
        return backbone.hf_forward(
            input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs
        )
    add_norm = _fused_add_norm if fused else _add_norm
    hidden = backbone.embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (b, l, d_model)
    residual = None
    for block in backbone.layers:
        args = (add_norm, block, hidden, residual, attention_mask, seq_idx)
        if getattr(block, "gradient_checkpointing", False) and backbone.training:
            hidden, residual = checkpoint(_block, *args, use_reentrant=False)
        else:
            hidden, residual = _block(*args)
    hidden = add_norm(engine.final_norm(backbone), hidden, residual, backbone.layers[-1].residual_in_fp32)[0]
    return engine.backbone_output(last_hidden_state=hidden)


AddNorm = Callable[[nn.Module, Tensor, Tensor | None, bool], tuple[Tensor, Tensor]]


def _block(
    add_norm: AddNorm,
    block: nn.Module,
    hidden: Tensor,
    residual: Tensor | None,
    attention_mask: Tensor | None,
    seq_idx: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """residual += hidden; hidden = mixer(RMSNorm(residual))."""
    normed, residual = add_norm(block.norm, hidden, residual, block.residual_in_fp32)
    documents = {} if seq_idx is None else {"seq_idx": seq_idx}
    return block.mixer(normed, attention_mask=attention_mask, **documents), residual


def _fused_add_norm(norm: nn.Module, hidden: Tensor, residual: Tensor | None, in_fp32: bool) -> tuple[Tensor, Tensor]:
    """(RMSNorm(residual + hidden), residual + hidden), the add and the norm in one kernel."""
    return kernels.rms_norm_fn(
        hidden, norm.weight, None, residual=residual, prenorm=True, residual_in_fp32=in_fp32, eps=norm.variance_epsilon
    )


def _add_norm(norm: nn.Module, hidden: Tensor, residual: Tensor | None, in_fp32: bool) -> tuple[Tensor, Tensor]:
    """`_fused_add_norm` as the model's own blocks compute it."""
    residual = hidden if residual is None else residual + hidden
    normed = norm(residual.to(norm.weight.dtype))
    return normed, residual.float() if in_fp32 else residual


def set_activation_recompute(model: nn.Module, enabled: bool) -> None:
    """Memory-lean mode: keep only each layer's input and recompute the layer in backward.

    Uses the model's own switch, which our fused layer loop honours too."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    if enabled:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        lm.gradient_checkpointing_disable()
