"""What every mixer forward shares (Mamba, Mamba-2, Sparse Mamba): the code path it takes, when it hands
over to the model's own cached forward, padding, and Mamba's causal convolution and gate."""

from typing import Literal

import torch.nn.functional as F
from torch import Tensor
from transformers.models.mamba.modeling_mamba import MambaMixer

from worker.engine.documents import causal_conv1d

# auto: fused kernel on CUDA when importable, else the chunked torch scan.
# torch: chunked torch scan everywhere. reference: one Python step per token (the executable spec).
ForwardPath = Literal["auto", "torch", "reference"]


def has_cache(kwargs: dict) -> bool:
    return kwargs.get("cache") is not None or kwargs.get("cache_params") is not None


def mask_padding(hidden: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Zero padded positions so they don't feed the state (hidden: (b, l, ...), mask: (b, l))."""
    if attention_mask is None:
        return hidden
    return (hidden * attention_mask[:, :, None]).to(hidden.dtype)


def kernel_aligned(rows: Tensor) -> Tensor:
    """`rows` (..., n) as a view whose row stride is a multiple of 8, as causal_conv1d's channel-last
    kernel requires of the column slices the fused Mamba-2 kernel takes (a Mamba-2 in_proj's width,
    2·d_inner + 2·groups·d_state + heads, often is not: d_model 128 with heads of 64 gives 548). One
    padded copy when it is not; the view's values and gradients are those of `rows`."""
    width = rows.shape[-1]
    if rows.stride(-2) % 8 == 0:
        return rows
    return F.pad(rows, (0, -width % 8))[..., :width]


def conv_and_gate(
    mixer: MambaMixer, xz: Tensor, attention_mask: Tensor | None, seq_idx: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """in_proj's output (b, 2·d_inner, l) -> the scan input x (b, l, d_inner) and the gate z (b, d_inner, l);
    with `seq_idx` (b, l) the convolution reads no earlier document."""
    x, z = xz.chunk(2, dim=1)  # (b, d_inner, l) each
    x = causal_conv1d(x, mixer.conv1d.weight, mixer.conv1d.bias, seq_idx)
    return mask_padding(mixer.act(x).transpose(1, 2), attention_mask), z
