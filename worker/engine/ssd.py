"""Mamba-2's chunked scan (SSD) in pure torch, with a state reset where each packed document starts.

Per head h (scalar A_h), with dt = clamp(softplus(dt + dt_bias), dt_limit):
    h_t = exp(dt_t·A_h)·h_{t-1} + dt_t·x_t·B_tᵀ      x: (b, l, h, p); B, C: (b, l, g, n); h_t: (p, n)
    y_t = h_t·C_t + D_h·x_t
and h_{t-1} is dropped where reset_t. The chunked form is transformers' `torch_forward` of Mamba-2
(intra-chunk quadratic term, chunk states, inter-chunk recurrence, state read-out); a reset enters as a
log-decay of -inf, so every decay through it is exp(-inf) = 0. That is exact only where decays are sums of
log-decays (segment sums, cumulative sums from a chunk's start), never differences of cumulative sums
(-inf - -inf): the decay from a token to its chunk's end is the last row of the segment sums here.
transformers' own scan takes no `seq_idx`; mamba-ssm's kernels take it on CUDA (families/mamba2.py).
"""

import torch
import torch.nn.functional as F
from torch import Tensor


def segment_sum(x: Tensor) -> Tensor:
    """(..., c) -> (..., c, c): [i, j] = x_{j+1} + ... + x_i for i >= j (0 on the diagonal), -inf above it.
    Each entry is a sum of its own terms, so a -inf term makes exactly the spans through it -inf."""
    c = x.shape[-1]
    rows = x[..., None].expand(*x.shape, c)  # [i, j] = x_i
    below = torch.ones(c, c, dtype=torch.bool, device=x.device).tril(-1)
    sums = rows.masked_fill(~below, 0).cumsum(dim=-2)
    return sums.masked_fill(~below.logical_or(torch.eye(c, dtype=torch.bool, device=x.device)), -torch.inf)


def _chunks(x: Tensor, chunk: int) -> Tensor:
    """(b, l, ...) -> (b, chunks, chunk, ...), zero-padded at the end."""
    pad = -x.shape[1] % chunk
    x = F.pad(x, (0, 0) * (x.dim() - 2) + (0, pad))
    return x.reshape(x.shape[0], -1, chunk, *x.shape[2:])


def ssd_scan(
    x: Tensor,
    dt: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    chunk: int,
    D: Tensor,
    dt_bias: Tensor,
    dt_limit: tuple[float, float],
    reset: Tensor | None = None,
) -> Tensor:
    """x (b, l, h, p), dt (b, l, h) before its bias, A (h,), B and C (b, l, g, n), D and dt_bias (h,),
    reset (b, l) bool -> y (b, l, h, p) in fp32."""
    b, length, heads, _ = x.shape
    dt = F.softplus(dt.float() + dt_bias.float()).clamp(*dt_limit)  # (b, l, h)
    x = x.float()
    B, C = (m.float().repeat_interleave(heads // m.shape[2], dim=2) for m in (B, C))  # (b, l, h, n)
    log_decay = dt * A.float()  # (b, l, h)
    if reset is not None:
        log_decay = log_decay.masked_fill(reset[..., None], -torch.inf)
    xs, Bs, Cs = (_chunks(t, chunk) for t in (x * dt[..., None], B, C))  # (b, c, s, h, ·)
    a = _chunks(log_decay, chunk).permute(0, 3, 1, 2)  # (b, h, c, s)
    decay = torch.exp(segment_sum(a))  # (b, h, c, s, s): from after token j through token i of a chunk
    # 1. Within each chunk, from a zero state: attention-like, C_i·B_j weighted by the decay from j to i.
    scores = torch.einsum("bclhn,bcshn->bclsh", Cs, Bs) * decay.permute(0, 2, 3, 4, 1)
    y = torch.einsum("bclsh,bcshp->bclhp", scores, xs)
    # 2. Each chunk's own final state, every token decayed to the chunk's end (the decays' last row).
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", Bs, decay[..., -1, :], xs)
    # 3. The state entering each chunk: earlier chunks' states, decayed through the chunks in between.
    states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1)  # a zero state enters chunk 0
    across = torch.exp(segment_sum(F.pad(a.sum(-1), (1, 0))))  # (b, h, c + 1, c + 1)
    entering = torch.einsum("bhij,bjhpn->bihpn", across, states)[:, :-1]  # (b, c, h, p, n)
    # 4. What the entering state adds to each token, decayed from the chunk's start through the token.
    y = y + torch.einsum("bclhn,bchpn,bhcl->bclhp", Cs, entering, torch.exp(a.cumsum(-1)))
    y = y.reshape(b, -1, heads, x.shape[-1])[:, :length]
    return y + D.float()[:, None] * x
