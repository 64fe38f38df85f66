"""Mamba (`model_type` "mamba"): its mixer forward through our fused mixer (mamba_inner.py) or a torch scan,
with LoRA folded into x_proj, dt_proj and out_proj, which the kernel reads as raw weights."""

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import MambaConfig, MambaForCausalLM
from transformers.models.mamba.modeling_mamba import MambaMixer, MambaModel, MambaOutput

from app.families.family import EXPAND, ModelShape
from worker.engine import kernels, scan_cuda
from worker.engine.documents import document_starts
from worker.engine.families.family import FamilyEngine
from worker.engine.lora_weights import base_layer, effective_weight, lora_factors
from worker.engine.mamba_inner import mamba_inner_lora
from worker.engine.mixer_parts import ForwardPath, conv_and_gate, has_cache, mask_padding
from worker.engine.scan import selective_scan_chunked, selective_scan_reference


def mixer_forward(
    mixer: MambaMixer,
    hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    *,
    path: ForwardPath = "auto",
    bcdt_norms: bool = False,
    dt_norm_first: bool = False,
    seq_idx: Tensor | None = None,
    **kwargs,
) -> Tensor:
    """`bcdt_norms`: normalise B, C and Δ with the mixer's weightless RMSNorms (Falcon-Mamba), where
    mamba-ssm's kernel does, which trained the Falcon-Mamba checkpoints: Δ over its d_inner channels after
    dt_proj. (transformers' own CPU forward normalises dt's dt_rank columns before dt_proj instead, so
    its CPU and GPU forwards disagree; ours agree on every path.)
    `dt_norm_first`: with the norms, normalise dt's dt_rank columns before dt_proj, as Jamba's mixer does
    with a weighted norm. With either, the scan alone is a CUDA kernel (see below).
    `seq_idx` (b, l): packed documents, each from a zero state. Our selective scan resets the state, so the
    fused mixer takes them where it runs on our scan; with mamba-ssm's, the conv and projections run in torch and
    only the scan in CUDA (kernels.selective_scan, which resets through its inputs)."""
    if has_cache(kwargs):
        return mixer.hf_forward(hidden_states, attention_mask=attention_mask, **kwargs)
    hidden_states = mask_padding(hidden_states, attention_mask)
    on_cuda = path == "auto" and kernels.fused_kernels_available() and hidden_states.is_cuda
    fused = on_cuda and (seq_idx is None or scan_cuda.takes(hidden_states, mixer.ssm_state_size))
    # With norms on Δ, B and C the projections and norms run in torch and only the scan is a CUDA kernel:
    # mamba-ssm's fused mixer normalises them in forward but its backward skips the norms (dB, dC and dΔ
    # land on x_proj's output as if unnormalised), so the LoRA gradients it gives are wrong.
    inner = fused and not bcdt_norms
    if on_cuda and seq_idx is not None and not inner:  # causal-conv1d reads seq_idx only with channels contiguous
        xz = mixer.in_proj(hidden_states).transpose(1, 2)  # (b, 2·d_inner, l)
    else:
        xz = _in_proj_channels_first(mixer.in_proj, hidden_states)
    A = -torch.exp(mixer.A_log.float())  # (d_inner, n)
    x_proj_w = effective_weight(mixer.x_proj)  # (dt_rank + 2n, d_inner)
    dt_proj_w = effective_weight(mixer.dt_proj)  # (d_inner, dt_rank)
    dt_bias = base_layer(mixer.dt_proj).bias.float()
    out_bias = base_layer(mixer.out_proj).bias

    if inner:
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
            seq_idx,
        )

    out_proj_w = effective_weight(mixer.out_proj)  # (d_model, d_inner)

    # Every (b, channels, l) tensor the scan reads is made in that layout, length contiguous, as the kernel
    # reads it: no transposed copies of x, z or Δ, forward or backward.
    x, z = conv_and_gate(mixer, xz, attention_mask, seq_idx)
    u = x.transpose(1, 2)  # (b, d_inner, l)
    x_dbl = _per_column(x_proj_w, u)  # (b, dt_rank + 2n, l)
    dt, B, C = x_dbl.split([mixer.time_step_rank, mixer.ssm_state_size, mixer.ssm_state_size], dim=1)
    delta = _delta_before_bias(mixer, dt, dt_proj_w, bcdt_norms, dt_norm_first)  # (b, d_inner, l)
    if bcdt_norms:
        B, C = _over_channels(mixer.b_layernorm, B), _over_channels(mixer.c_layernorm, C)
    resets = {} if seq_idx is None else {"reset": document_starts(seq_idx)}
    if on_cuda:
        scan = kernels.selective_scan
    else:
        scan = selective_scan_reference if path == "reference" else selective_scan_chunked
    y = scan(u, delta, A, B, C, mixer.D, z, dt_bias, **resets)
    return F.linear(y.transpose(1, 2).to(hidden_states.dtype), out_proj_w, out_bias)


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


def _per_column(weight: Tensor, t: Tensor) -> Tensor:
    """weight (out, in) times every column of t (b, in, l) -> (b, out, l), one batched GEMM. Not torch.matmul:
    whether it folds the batch into rows depends on the weight's requires_grad, which would change the
    output's last bits between a trainable and a frozen copy of one model."""
    return torch.bmm(weight.expand(t.shape[0], *weight.shape), t)


def _over_channels(norm: nn.Module, t: Tensor) -> Tensor:
    """A norm over the last dimension, applied to (b, channels, l) over the channels; the output keeps t's layout."""
    return norm(t.transpose(1, 2)).transpose(1, 2)


def _delta_before_bias(
    mixer: MambaMixer, dt: Tensor, dt_proj_w: Tensor, bcdt_norms: bool, dt_norm_first: bool
) -> Tensor:
    """dt_proj's weight times dt (b, dt_rank, l) -> (b, d_inner, l), with the mixer's dt norm as `mixer_forward`
    places it: on dt before (`dt_norm_first`) or on the product after."""
    if bcdt_norms and dt_norm_first:
        dt = _over_channels(mixer.dt_layernorm, dt)
    delta = _per_column(dt_proj_w, dt)
    if not bcdt_norms or dt_norm_first:
        return delta
    # The norm computes in fp32: autograd would keep an fp32 copy of Δ (d_inner per token, twice a bf16 one) for
    # its backward. Recomputed there instead, only Δ itself is kept.
    return checkpoint(_over_channels, mixer.dt_layernorm, delta, use_reentrant=False)


def delta(mixer: MambaMixer, hidden: Tensor, *, bcdt_norms: bool = False, dt_norm_first: bool = False) -> Tensor:
    """Δ = softplus(dt_proj(x_proj(conv(in_proj(hidden))))) in fp32: hidden (b, l, d_model) -> (b, l, d_inner);
    `bcdt_norms`, `dt_norm_first`: with the mixer's RMSNorm on dt, as in `mixer_forward`."""
    seq_len = hidden.shape[1]
    x, _ = mixer.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)  # (b, d_inner, l)
    x = F.conv1d(
        x, mixer.conv1d.weight, mixer.conv1d.bias, padding=mixer.conv_kernel_size - 1, groups=mixer.intermediate_size
    )[..., :seq_len]
    x_dbl = _per_column(effective_weight(mixer.x_proj), mixer.act(x))  # (b, dt_rank + 2n, l)
    dt = x_dbl[:, : mixer.time_step_rank]
    delta = _delta_before_bias(mixer, dt, effective_weight(mixer.dt_proj), bcdt_norms, dt_norm_first)
    return F.softplus((delta.transpose(1, 2) + base_layer(mixer.dt_proj).bias).float())


def build_config(
    shape: ModelShape, vocab_size: int, ids: dict[str, Any], config_class: type[MambaConfig] = MambaConfig
) -> MambaConfig:
    """`config_class`: a family whose config takes Mamba's arguments (Falcon-Mamba)."""
    variant = {} if shape.variant is None else {"ssm_structure": shape.variant}
    return config_class(
        vocab_size=vocab_size,
        hidden_size=shape.d_model,
        num_hidden_layers=shape.n_layer,
        state_size=shape.d_state,
        expand=EXPAND,
        **ids,
        **variant,
    )


ENGINE = FamilyEngine(
    model_type="mamba",
    causal_lm=MambaForCausalLM,
    mixers=(MambaMixer,),
    mixer_forward=mixer_forward,
    fused_backbone=MambaModel,
    backbone_output=MambaOutput,
    delta=delta,
    d_inner=lambda config: config.intermediate_size,
    scan_copies=(4, 4),
    build_config=build_config,
)
