"""Mixer forwards for Mamba and Mamba-2 that see LoRA on every target, on every code path.

`install_forwards(model)` replaces each mixer's `forward`. The fused CUDA path and the pure-torch
paths sit side by side, chosen by one condition, like mamba-ssm's `mamba_simple.py`; both read
their weights through `effective_weight`, so a LoRA adapter trains through the fused kernel and the
reference path alike.

Calls with a generation cache go to the model's own recurrent forward, which reads dt_proj's raw
weight on recent transformers: merge the adapter (`lora_fold.merge_adapter`) before generating.
So that a plain `model(input_ids)` in eval mode does not ask for a cache, `install_forwards` turns
`config.use_cache` off; `generate()` still asks for one explicitly.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers.models.mamba.modeling_mamba import MambaMixer, MambaModel, MambaOutput
from transformers.models.mamba2.modeling_mamba2 import (
    Mamba2Mixer,
    Mamba2Model,
    Mamba2Output,
)

from worker.engine.lora_weights import base_layer, effective_weight, lora_factors
from worker.engine.mamba_inner import mamba_inner_lora, selective_scan_cuda
from worker.engine.mixer_parts import ForwardPath, conv_and_gate, has_cache, mask_padding
from worker.engine.scan import selective_scan_chunked, selective_scan_reference
from worker.engine.sparse_mamba import apply_structure, route

try:  # optional: only on machines with CUDA and the mamba-ssm / causal-conv1d wheels
    from mamba_ssm.ops.triton.layer_norm import rms_norm_fn
    from mamba_ssm.ops.triton.ssd_combined import mamba_split_conv1d_scan_combined
except ImportError:
    mamba_split_conv1d_scan_combined = None
    rms_norm_fn = None


def fused_kernels_available() -> bool:
    return selective_scan_cuda is not None and torch.cuda.is_available()


def install_forwards(model: nn.Module, path: ForwardPath = "auto") -> nn.Module:
    """Route every Mamba / Mamba-2 mixer of `model` through our forwards (idempotent)."""
    if getattr(model, "config", None) is not None:
        model.config.use_cache = False
    apply_structure(model)  # SC / SO parameters for a model built from a structured config
    for module in model.modules():
        # Keep the model's own forward once, for generation with a cache.
        keeps_own = isinstance(module, MambaMixer | Mamba2Mixer | MambaModel | Mamba2Model)
        if keeps_own and not hasattr(module, "hf_forward"):
            module.hf_forward = module.forward
        if isinstance(module, MambaMixer | Mamba2Mixer):
            impl = mamba_mixer_forward if isinstance(module, MambaMixer) else mamba2_mixer_forward
            module.forward = route(module, partial(impl, module, path=path), path)
        elif isinstance(module, MambaModel | Mamba2Model):
            module.forward = partial(backbone_forward, module, path=path)
    return model


def backbone_forward(
    backbone: MambaModel | Mamba2Model,
    input_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    attention_mask: Tensor | None = None,
    *,
    path: ForwardPath = "auto",
    **kwargs,
) -> MambaOutput | Mamba2Output:
    """The layer stack with residual-add and RMSNorm fused into one Triton kernel per layer.

    The model's own blocks cast to fp32, normalise, cast back and add the residual in separate
    kernels, each a full pass over the activations: that glue costs more GPU time than the matrix
    products. Anything unusual (a cache, per-layer hidden states, no kernels) takes the model's own loop.
    """
    on_cuda = (input_ids if input_ids is not None else inputs_embeds).is_cuda
    fused = path == "auto" and rms_norm_fn is not None and on_cuda
    if not fused or has_cache(kwargs) or kwargs.get("use_cache") or kwargs.get("output_hidden_states"):
        return backbone.hf_forward(
            input_ids=input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs
        )
    hidden = backbone.embeddings(input_ids) if inputs_embeds is None else inputs_embeds  # (b, l, d_model)
    residual = None
    for block in backbone.layers:
        if getattr(block, "gradient_checkpointing", False) and backbone.training:
            hidden, residual = checkpoint(_fused_block, block, hidden, residual, attention_mask, use_reentrant=False)
        else:
            hidden, residual = _fused_block(block, hidden, residual, attention_mask)
    hidden = rms_norm_fn(
        hidden,
        backbone.norm_f.weight,
        None,
        residual=residual,
        prenorm=False,
        residual_in_fp32=backbone.layers[-1].residual_in_fp32,
        eps=backbone.norm_f.variance_epsilon,
    )
    output_type = MambaOutput if isinstance(backbone, MambaModel) else Mamba2Output
    return output_type(last_hidden_state=hidden)


def mamba_mixer_forward(
    mixer: MambaMixer,
    hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    *,
    path: ForwardPath = "auto",
    **kwargs,
) -> Tensor:
    if has_cache(kwargs):
        return mixer.hf_forward(hidden_states, attention_mask=attention_mask, **kwargs)
    hidden_states = mask_padding(hidden_states, attention_mask)
    fused = path == "auto" and fused_kernels_available() and hidden_states.is_cuda
    if fused:
        xz = _in_proj_channels_first(mixer.in_proj, hidden_states)
    else:
        xz = mixer.in_proj(hidden_states).transpose(1, 2)  # (b, 2·d_inner, l)
    A = -torch.exp(mixer.A_log.float())  # (d_inner, n)
    x_proj_w = effective_weight(mixer.x_proj)  # (dt_rank + 2n, d_inner)
    dt_proj_w = effective_weight(mixer.dt_proj)  # (d_inner, dt_rank)
    dt_bias = base_layer(mixer.dt_proj).bias.float()
    out_bias = base_layer(mixer.out_proj).bias

    if fused:
        return mamba_inner_lora(
            xz,
            mixer.conv1d.weight,
            mixer.conv1d.bias,
            x_proj_w,
            dt_proj_w,
            base_layer(mixer.out_proj).weight,
            out_bias,
            lora_factors(mixer.out_proj),
            A,
            mixer.D.float(),
            dt_bias,
        )

    out_proj_w = effective_weight(mixer.out_proj)  # (d_model, d_inner)
    x, z = conv_and_gate(mixer, xz, attention_mask)
    dt, B, C = F.linear(x, x_proj_w).split([mixer.time_step_rank, mixer.ssm_state_size, mixer.ssm_state_size], dim=-1)
    delta = F.linear(dt, dt_proj_w).transpose(1, 2)  # (b, d_inner, l)
    scan = selective_scan_reference if path == "reference" else selective_scan_chunked
    y = scan(x.transpose(1, 2), delta, A, B.transpose(1, 2), C.transpose(1, 2), mixer.D, z, dt_bias)
    return F.linear(y.transpose(1, 2).to(hidden_states.dtype), out_proj_w, out_bias)


def _fused_block(
    block: nn.Module, hidden: Tensor, residual: Tensor | None, attention_mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    """residual += hidden; hidden = mixer(RMSNorm(residual)), with the add and the norm in one kernel."""
    normed, residual = rms_norm_fn(
        hidden,
        block.norm.weight,
        None,
        residual=residual,
        prenorm=True,
        residual_in_fp32=block.residual_in_fp32,
        eps=block.norm.variance_epsilon,
    )
    return block.mixer(normed, attention_mask=attention_mask), residual


def set_activation_recompute(model: nn.Module, enabled: bool) -> None:
    """Memory-lean mode: keep only each layer's input and recompute the layer in backward.

    Uses the model's own switch, which our fused layer loop honours too."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    if enabled:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        lm.gradient_checkpointing_disable()


def _in_proj_channels_first(in_proj: nn.Module, hidden: Tensor) -> Tensor:
    """in_proj(hidden) laid out (b, 2·d_inner, length) with length contiguous, as the fused kernel reads it.

    Computing W·hᵀ gives that layout directly (as mamba-ssm's own module does); `in_proj(h).transpose`
    would make the kernel copy the largest activation of the layer, forward and backward.
    LoRA is applied in the same layout, dropout included, so in_proj needs no fold.
    """
    b, length, _ = hidden.shape
    flat_t = hidden.reshape(b * length, -1).t()  # (d_model, b·l)
    linear = base_layer(in_proj)
    xz = linear.weight @ flat_t  # (2·d_inner, b·l)
    for f in lora_factors(in_proj):
        dropped = f.dropout(hidden).reshape(b * length, -1).t()
        # Scale the (out, r) factor, not the (out, b·l) product, and let the GEMM do the add.
        xz = torch.addmm(xz, f.scale * f.B, f.A @ dropped)
    if linear.bias is not None:
        xz = xz + linear.bias[:, None]
    return xz.view(-1, b, length).permute(1, 0, 2)


def mamba2_mixer_forward(
    mixer: Mamba2Mixer,
    hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    *,
    path: ForwardPath = "auto",
    **kwargs,
) -> Tensor:
    fused = path == "auto" and mamba_split_conv1d_scan_combined is not None and hidden_states.is_cuda
    if has_cache(kwargs) or not fused:
        # Without the fused kernel the model's own forward calls in_proj and out_proj as modules,
        # so LoRA applies there as it is; the fused kernel below needs out_proj's folded weight.
        with _training_off_for_fused(mixer):
            return mixer.hf_forward(hidden_states, attention_mask=attention_mask, **kwargs)
    zxbcdt = mixer.in_proj(mask_padding(hidden_states, attention_mask))  # (b, l, in_proj_out)
    return mamba_split_conv1d_scan_combined(
        zxbcdt,
        mixer.conv1d.weight.squeeze(1),
        mixer.conv1d.bias,
        mixer.dt_bias,
        -torch.exp(mixer.A_log.float()),
        D=mixer.D,
        chunk_size=mixer.chunk_size,
        activation=mixer.activation,
        rmsnorm_weight=mixer.norm.weight,
        rmsnorm_eps=mixer.norm.variance_epsilon,
        outproj_weight=effective_weight(mixer.out_proj),
        outproj_bias=base_layer(mixer.out_proj).bias,
        headdim=mixer.head_dim,
        ngroups=mixer.n_groups,
        norm_before_gate=False,
        dt_limit=mixer.time_step_limit,
    )


@contextmanager
def _training_off_for_fused(mixer: nn.Module) -> Iterator[None]:
    """Run the model's own Mamba-2 forward with `training` off so it never takes its fused branch
    (which reads out_proj's raw weight); autograd still records everything, so gradients flow."""
    was_training = mixer.training
    mixer.training = False
    try:
        yield
    finally:
        mixer.training = was_training
