"""Packed documents kept apart: what a mixer or an attention layer needs from `seq_idx`.

A training row holds several documents (worker/engine/data.py); `seq_idx` (b, l) int32 says which one each
token belongs to, counted from 0 in each row and non-decreasing, as mamba-ssm's kernels take it. A token
must see only its own document: an SSM resets its state where a document starts (`document_starts`), its
causal convolution reads no earlier document (`causal_conv1d`), and attention is block-diagonal causal.

Attention in a hybrid family's engine (FamilyEngine.backbone_kwargs says what that takes): besides `seq_idx`
to its mixers, pass the model's own backbone (`hybrid_documents`)
    position_ids=document_positions(seq_idx), attention_mask=document_causal_mask(seq_idx, dtype)
Positions restart at 0 per document, so rotary embeddings match each document alone; the 4D mask is taken
as it is by transformers' `create_causal_mask` (sdpa and flex read the boolean mask; eager adds the float
one, `dtype` = the attention's dtype). Positions alone also work: transformers then finds the documents
itself (`find_packed_sequence_indices`), or derives flash-attention's `cu_seq_lens_q`, but reads them back
to the host every step; the mask here costs b·l² bytes and no sync.
"""

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import PretrainedConfig

from worker.engine import kernels


def document_starts(seq_idx: Tensor) -> Tensor:
    """(b, l) bool: True at the first token of every document but the row's first (whose state is 0 anyway)."""
    starts = torch.zeros_like(seq_idx, dtype=torch.bool)
    starts[:, 1:] = seq_idx[:, 1:] != seq_idx[:, :-1]
    return starts


def causal_conv1d(x: Tensor, weight: Tensor, bias: Tensor | None, seq_idx: Tensor | None) -> Tensor:
    """Depthwise causal convolution (b, channels, l) -> (b, channels, l), as nn.Conv1d with `groups=channels`
    and left padding computes it; with `seq_idx`, a token reads no token of an earlier document. On CUDA
    causal-conv1d's kernel computes it where it can (with `seq_idx`, only for channels-contiguous x)."""
    length, width = x.shape[-1], weight.shape[-1]
    weight = weight.reshape(weight.shape[0], width)  # (channels, width), from Conv1d's (channels, 1, width) too
    if kernels.causal_conv1d_fn is not None and x.is_cuda and (seq_idx is None or _channel_last(x)):
        return kernels.causal_conv1d_fn(
            x, weight, bias, seq_idx=None if seq_idx is None else seq_idx.int().contiguous()
        )
    if seq_idx is None:
        return F.conv1d(x, weight[:, None], bias, padding=width - 1, groups=x.shape[1])[..., :length]
    padded = F.pad(x, (width - 1, 0))
    padded_idx = F.pad(seq_idx, (width - 1, 0), value=-1)
    out = x.new_zeros(x.shape) if bias is None else bias[:, None].expand_as(x).to(x.dtype)
    for tap in range(width):  # tap `width - 1` reads the token itself, tap 0 the one `width - 1` before it
        same = (padded_idx[:, tap : tap + length] == seq_idx)[:, None]  # (b, 1, l)
        out = out + weight[:, tap, None] * padded[..., tap : tap + length] * same
    return out


def _channel_last(x: Tensor) -> bool:
    """Whether causal-conv1d's kernel reads `seq_idx` with `x` (b, channels, l): channels contiguous, the other
    strides multiples of 8."""
    return x.stride(1) == 1 and x.stride(0) % 8 == 0 and x.stride(2) % 8 == 0


def document_positions(seq_idx: Tensor) -> Tensor:
    """(b, l) int64 positions restarting at 0 where each document starts."""
    index = torch.arange(seq_idx.shape[1], device=seq_idx.device).expand_as(seq_idx)
    start = torch.where(document_starts(seq_idx), index, 0).cummax(dim=1).values  # each token's document start
    return index - start


def document_causal_mask(seq_idx: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """(b, 1, l, l): query t may read key s when s <= t in the same document. Boolean (True: read), or with a
    float `dtype` additive (0: read, the dtype's lowest value: not)."""
    length = seq_idx.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=seq_idx.device).tril()
    allowed = (seq_idx[:, :, None] == seq_idx[:, None, :]) & causal  # (b, l, l)
    if dtype is None or not dtype.is_floating_point:
        return allowed[:, None]
    return torch.zeros(allowed.shape, dtype=dtype, device=seq_idx.device).masked_fill_(
        ~allowed, torch.finfo(dtype).min
    )[:, None]


def attention_mask_dtype(config: PretrainedConfig) -> torch.dtype | None:
    """The mask dtype the model's attention takes: eager adds a float mask (promoted to its scores' dtype), the
    others read a boolean one."""
    return torch.float32 if config._attn_implementation == "eager" else None


def mixer_documents(seq_idx: Tensor, mask_dtype: torch.dtype | None) -> dict[str, Tensor]:
    """A backbone's arguments for packed documents where our layer loop hands `seq_idx` to the mixers."""
    return {"seq_idx": seq_idx}


def hybrid_documents(seq_idx: Tensor, mask_dtype: torch.dtype | None) -> dict[str, Tensor]:
    """A hybrid's arguments for packed documents, where its model's own layer loop runs: the loop hands
    `seq_idx` on to every layer and mixer through their keyword arguments (transformers 5.17 and 5.24 alike;
    where a block drops them, the engine's `block_forward` does not), and its attention reads each document
    alone from the positions and the mask."""
    return {
        "seq_idx": seq_idx,
        "position_ids": document_positions(seq_idx),
        "attention_mask": document_causal_mask(seq_idx, mask_dtype),
    }
