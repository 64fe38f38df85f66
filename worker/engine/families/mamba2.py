"""Mamba-2 (`model_type` "mamba2"): its mixer forward through `mamba_split_conv1d_scan_combined` with LoRA
folded into out_proj, which the kernel reads as a raw weight, or else the model's own torch forward."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Mamba2Config, Mamba2ForCausalLM
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer, Mamba2Model, Mamba2Output

from app.families.family import EXPAND, ModelShape
from app.families.mamba2 import HEAD_DIM
from worker.engine import kernels
from worker.engine.documents import causal_conv1d, document_starts
from worker.engine.families.family import FamilyEngine
from worker.engine.lora_weights import base_layer, effective_weight
from worker.engine.mixer_parts import ForwardPath, has_cache, kernel_aligned, mask_padding
from worker.engine.ssd import ssd_scan

# The reference checkpoints' scan chunk (state-spaces/mamba2-*), which bench/step.py measures too.
CHUNK_SIZE = 256


def in_projection(mixer: Mamba2Mixer, hidden: Tensor) -> Tensor:
    """in_proj's output zxbcdt (b, l, gate + x + B + C + dt) from the mixer's input (b, l, d_model)."""
    return mixer.in_proj(hidden)


def gated_norm_args(mixer: Mamba2Mixer) -> dict[str, Any]:
    """The fused kernel's arguments for the gated RMSNorm before out_proj: Mamba-2 normalises y·silu(z)."""
    return {"rmsnorm_weight": mixer.norm.weight, "rmsnorm_eps": mixer.norm.variance_epsilon, "norm_before_gate": False}


def mixer_forward(
    mixer: Mamba2Mixer,
    hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    *,
    path: ForwardPath = "auto",
    projection: Callable[[nn.Module, Tensor], Tensor] = in_projection,
    norm_args: Callable[[nn.Module], dict[str, Any]] = gated_norm_args,
    seq_idx: Tensor | None = None,
    **kwargs,
) -> Tensor:
    """`projection` and `norm_args`: a family with Mamba-2's mixer and its own multipliers or norm (Falcon-H1).
    `seq_idx` (b, l) int32: packed documents, each from a zero state (the kernel takes it as it is)."""
    fused = path == "auto" and kernels.mamba_split_conv1d_scan_combined is not None and hidden_states.is_cuda
    if has_cache(kwargs) or (not fused and seq_idx is None):
        # Without the fused kernel the model's own forward calls in_proj and out_proj as modules,
        # so LoRA applies there as it is; the fused kernel below needs out_proj's folded weight.
        with training_off_for_fused(mixer), channel_first_in_proj(mixer, hidden_states.is_cuda):
            return mixer.hf_forward(hidden_states, attention_mask=attention_mask, **kwargs)
    if not fused:
        return _documents_forward(mixer, hidden_states, attention_mask, seq_idx, projection, norm_args)
    return fused_forward(
        mixer, hidden_states, attention_mask, projection=projection, norm_args=norm_args, seq_idx=seq_idx
    )


def fused_forward(
    mixer: nn.Module,
    hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    *,
    projection: Callable[[nn.Module, Tensor], Tensor] = in_projection,
    norm_args: Callable[[nn.Module], dict[str, Any]] = gated_norm_args,
    seq_idx: Tensor | None = None,
) -> Tensor:
    """The mixer through `mamba_split_conv1d_scan_combined` (conv, scan, gated norm and out_proj in one)."""
    zxbcdt = projection(mixer, mask_padding(hidden_states, attention_mask))  # (b, l, in_proj_out)
    return kernels.mamba_split_conv1d_scan_combined(
        kernel_aligned(zxbcdt),
        mixer.conv1d.weight.squeeze(1),
        mixer.conv1d.bias,
        mixer.dt_bias,
        -torch.exp(mixer.A_log.float()),
        D=mixer.D,
        chunk_size=mixer.chunk_size,
        activation=mixer.activation,
        outproj_weight=effective_weight(mixer.out_proj),
        outproj_bias=base_layer(mixer.out_proj).bias,
        headdim=mixer.head_dim,
        ngroups=mixer.n_groups,
        dt_limit=mixer.time_step_limit,
        **norm_args(mixer),
        seq_idx=None if seq_idx is None else seq_idx.int().contiguous(),
    )


def _documents_forward(
    mixer: Mamba2Mixer,
    hidden: Tensor,
    attention_mask: Tensor | None,
    seq_idx: Tensor,
    projection: Callable[[nn.Module, Tensor], Tensor] = in_projection,
    norm_args: Callable[[nn.Module], dict[str, Any]] = gated_norm_args,
) -> Tensor:
    """The model's own torch forward (no cache) with packed documents kept apart: the conv reads no earlier
    document and the scan resets where one starts (transformers' scan cannot). Without a gated norm
    (`norm_args`' weight None) y is gated by silu(z), as the fused kernel does."""
    b, length, _ = hidden.shape
    projected = projection(mixer, mask_padding(hidden, attention_mask))  # (b, l, in_proj_out)
    gate, xBC, dt = projected.split([mixer.intermediate_size, mixer.conv_dim, mixer.num_heads], dim=-1)
    xBC = mixer.act(causal_conv1d(xBC.transpose(1, 2), mixer.conv1d.weight, mixer.conv1d.bias, seq_idx))
    state = mixer.n_groups * mixer.ssm_state_size
    x, B, C = mask_padding(xBC.transpose(1, 2), attention_mask).split([mixer.intermediate_size, state, state], dim=-1)
    y = ssd_scan(
        x.view(b, length, mixer.num_heads, mixer.head_dim),
        dt,
        -torch.exp(mixer.A_log.float()),
        B.view(b, length, mixer.n_groups, -1),
        C.view(b, length, mixer.n_groups, -1),
        mixer.chunk_size,
        mixer.D,
        mixer.dt_bias,
        mixer.time_step_limit,
        reset=document_starts(seq_idx),
    )
    y = y.reshape(b, length, -1)
    y = y * F.silu(gate) if norm_args(mixer)["rmsnorm_weight"] is None else mixer.norm(y, gate)
    return mixer.out_proj(y.to(hidden.dtype))


@contextmanager
def training_off_for_fused(mixer: nn.Module) -> Iterator[None]:
    """Run the model's own Mamba-2 forward with `training` off so it never takes its fused branch
    (which reads out_proj's raw weight); autograd still records everything, so gradients flow."""
    was_training = mixer.training
    mixer.training = False
    try:
        yield
    finally:
        mixer.training = was_training


@contextmanager
def channel_first_in_proj(mixer: nn.Module, on_cuda: bool) -> Iterator[None]:
    """On CUDA, in_proj's output laid out channel-first, (b, l, w) with strides (l·w, 1, l), while the model's
    own forward runs: with a generation cache its prefill hands a column slice of it, transposed, to
    causal-conv1d, whose channel-last kernel refuses a row stride that is not a multiple of 8 (a created
    model of d_model 128 has 548 columns); its channel-first kernel takes any width. Elementwise ops keep
    the layout, so Falcon-H1's muP multiply after in_proj passes it on."""
    if not on_cuda:
        yield
        return
    handle = mixer.in_proj.register_forward_hook(
        lambda module, args, output: output.transpose(1, 2).contiguous().transpose(1, 2)
    )
    try:
        yield
    finally:
        handle.remove()


def delta(
    mixer: Mamba2Mixer, hidden: Tensor, projection: Callable[[nn.Module, Tensor], Tensor] = in_projection
) -> Tensor:
    """Δ per head in fp32: hidden (b, l, d_model) -> (b, l, heads). dt is the last `num_heads` columns of
    in_proj's output in every transformers version (older ones put extra MLP columns first)."""
    dt = projection(mixer, hidden)[..., -mixer.num_heads :].float()  # (b, l, heads)
    delta = F.softplus(dt + mixer.dt_bias.float())
    low, high = mixer.time_step_limit
    return delta.clamp(min=low, max=high)


def build_config(shape: ModelShape, vocab_size: int, ids: dict[str, Any]) -> Mamba2Config:
    variant = {} if shape.variant is None else {"a_constraint": shape.variant}
    d_inner = EXPAND * shape.d_model
    return Mamba2Config(
        vocab_size=vocab_size,
        hidden_size=shape.d_model,
        num_hidden_layers=shape.n_layer,
        state_size=shape.d_state,
        expand=EXPAND,
        num_heads=d_inner // HEAD_DIM,
        head_dim=HEAD_DIM,
        n_groups=1,
        chunk_size=CHUNK_SIZE,
        tie_word_embeddings=True,
        **ids,
        **variant,
    )


ENGINE = FamilyEngine(
    model_type="mamba2",
    causal_lm=Mamba2ForCausalLM,
    mixers=(Mamba2Mixer,),
    mixer_forward=mixer_forward,
    fused_backbone=Mamba2Model,
    backbone_output=Mamba2Output,
    delta=delta,
    d_inner=lambda config: config.num_heads * config.head_dim,
    scan_copies=(0.25, 3),
    chunk_score_copies=4.5,
    build_config=build_config,
)
