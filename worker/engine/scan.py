"""Mamba's selective scan in pure torch: the reference recurrence and a chunked twin for the CPU.

Both compute, per batch b, channel d and state n (shapes as in mamba-ssm's `selective_scan_fn`):

    dt_t  = softplus(delta_t + delta_bias)                      u, delta, z: (b, d, l)
    h_t   = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t          A: (d, n); B, C: (b, n, l)
    y_t   = <h_t, C_t> + D * u_t,  then  y_t * silu(z_t)        D: (d,)

`selective_scan_reference` is the executable spec: one Python step per token. The chunked version
gives the same numbers with about 2·sqrt(l) Python steps instead of l, which is what makes a LoRA
step on the CPU fast: the work is the same, the launch and autograd overhead shrinks.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def step_size(delta: Tensor, delta_bias: Tensor | None) -> Tensor:
    """dt = softplus(delta + delta_bias), (b, d, l) in fp32."""
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[None, :, None]
    return F.softplus(delta)


def skip_and_gate(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    """y + D·u, gated by silu(z); (b, d, l) in u's dtype."""
    if D is not None:
        y = y + D.float()[None, :, None] * u.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(u.dtype)


def _discretize(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, delta_bias: Tensor | None) -> tuple[Tensor, Tensor]:
    """Log-decay dt·A and input dt·B·u, both (b, d, l, n) in fp32."""
    dt = step_size(delta, delta_bias)  # (b, d, l)
    log_decay = dt[..., None] * A.float()[None, :, None, :]
    dBu = (dt * u.float())[..., None] * B.float().transpose(1, 2)[:, None, :, :]
    return log_decay, dBu


def _readout(states: Tensor, u: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    """y = <h, C> + D·u, gated by silu(z); states (b, d, l, n) -> y (b, d, l) in u's dtype."""
    return skip_and_gate(torch.einsum("bdln,bnl->bdl", states, C.float()), u, D, z)


def selective_scan_reference(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
) -> Tensor:
    log_decay, dBu = _discretize(u, delta, A, B, delta_bias)
    h = torch.zeros_like(dBu[:, :, 0])  # (b, d, n)
    states = []
    for t in range(u.shape[-1]):
        h = torch.exp(log_decay[:, :, t]) * h + dBu[:, :, t]
        states.append(h)
    return _readout(torch.stack(states, dim=2), u, C, D, z)


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    chunk: int | None = None,
) -> Tensor:
    log_decay, dBu = _discretize(u, delta, A, B, delta_bias)
    return _readout(chunked_states(log_decay, dBu, chunk), u, C, D, z)


def chunked_states(log_decay: Tensor, dBu: Tensor, chunk: int | None = None) -> Tensor:
    """States h_t = exp(log_decay_t) * h_{t-1} + dBu_t, all (b, d, l, n), in about 2·sqrt(l) steps.

    Works for complex inputs too (companion_scan.py runs diagonalized companion states through it)."""
    b, d, length, n = dBu.shape
    c = chunk or max(1, math.isqrt(length))
    n_chunks = -(-length // c)
    pad = n_chunks * c - length
    if pad:
        # Zero log-decay and zero input past the end leave the states of real tokens untouched.
        log_decay = F.pad(log_decay, (0, 0, 0, pad))
        dBu = F.pad(dBu, (0, 0, 0, pad))
    log_decay = log_decay.view(b, d, n_chunks, c, n)
    dBu = dBu.view(b, d, n_chunks, c, n)

    # 1. Within every chunk at once, from a zero state: c steps, each over all chunks.
    h = torch.zeros_like(dBu[:, :, :, 0])  # (b, d, chunks, n)
    local = []
    for t in range(c):
        h = torch.exp(log_decay[:, :, :, t]) * h + dBu[:, :, :, t]
        local.append(h)
    local_states = torch.stack(local, dim=3)  # (b, d, chunks, c, n)
    # Decay from each chunk's start through position t: always <= 1, so no overflow in any precision.
    decay_from_start = torch.exp(torch.cumsum(log_decay, dim=3))

    # 2. Carry the true state across chunk boundaries: one step per chunk.
    carry = torch.zeros_like(h[:, :, 0])  # (b, d, n)
    entering = []
    for k in range(n_chunks):
        entering.append(carry)
        carry = decay_from_start[:, :, k, -1] * carry + local_states[:, :, k, -1]
    entering_states = torch.stack(entering, dim=2)  # (b, d, chunks, n)

    states = local_states + decay_from_start * entering_states[:, :, :, None, :]
    return states.view(b, d, n_chunks * c, n)[:, :, :length]
