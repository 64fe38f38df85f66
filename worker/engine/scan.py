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
    return _Recurrence.apply(log_decay, dBu, chunk or max(1, math.isqrt(log_decay.shape[2])))


class _Recurrence(torch.autograd.Function):
    """The recurrence with a hand-written backward, which is the same recurrence run backwards in time.

    Left to autograd, every step's slicing would cost a full-size zero tensor in backward, and every
    step's intermediates would be kept; here backward keeps only the decays and the states."""

    @staticmethod
    def forward(ctx, log_decay: Tensor, dBu: Tensor, chunk: int) -> Tensor:
        decay = torch.exp(log_decay)
        states = _recur(decay, dBu, chunk)
        ctx.save_for_backward(decay, states)
        ctx.chunk = chunk
        return states

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        decay, states = ctx.saved_tensors
        # g_t = grad_t + conj(decay_{t+1}) · g_{t+1}: the same recurrence, backwards in time.
        # (conj: PyTorch's convention for complex gradients; a no-op on real tensors.)
        g = _recur(F.pad(decay[:, :, 1:], (0, 0, 0, 1)).conj(), grad, ctx.chunk, reverse=True)
        # d h_t / d log_decay_t = decay_t · h_{t-1}, zero at t = 0 (the state before the first token is 0).
        grad_log_decay = torch.zeros_like(g)
        torch.mul(g[:, :, 1:], (decay[:, :, 1:] * states[:, :, :-1]).conj(), out=grad_log_decay[:, :, 1:])
        return grad_log_decay, g, None


def _recur(decay: Tensor, x: Tensor, c: int, reverse: bool = False) -> Tensor:
    """h_t = decay_t * h_{t-1} + x_t over dim 2 of (b, d, l, n) from h_{-1} = 0, without autograd;
    `reverse`: h_t = decay_t * h_{t+1} + x_t from h_l = 0."""
    b, d, length, n = x.shape
    n_chunks = -(-length // c)
    pad = n_chunks * c - length
    if pad:  # zero input past the end: no effect on real tokens, whichever the direction
        decay = F.pad(decay, (0, 0, 0, pad))
        x = F.pad(x, (0, 0, 0, pad))
    decay = decay.reshape(b, d, n_chunks, c, n)
    x = x.reshape(b, d, n_chunks, c, n)
    first, step = (c - 1, -1) if reverse else (0, 1)
    # 1. Within every chunk at once, from a zero state: c steps, each over all chunks, with the decay
    #    from the chunk's first step through t alongside (a product of decays <= 1: no overflow).
    h = torch.empty_like(x)
    through = torch.empty_like(decay)
    h[:, :, :, first] = x[:, :, :, first]
    through[:, :, :, first] = decay[:, :, :, first]
    for t in range(first + step, first + step * c, step):
        torch.addcmul(x[:, :, :, t], decay[:, :, :, t], h[:, :, :, t - step], out=h[:, :, :, t])
        torch.mul(decay[:, :, :, t], through[:, :, :, t - step], out=through[:, :, :, t])
    # 2. Chunk by chunk, add what the true state entering it contributes; its last state is then true
    #    and enters the next chunk.
    for k in range(n_chunks - 2, -1, -1) if reverse else range(1, n_chunks):
        entering = h[:, :, k - step, c - 1 - first][:, :, None]  # (b, d, 1, n)
        h[:, :, k].addcmul_(through[:, :, k], entering)
    return h.view(b, d, n_chunks * c, n)[:, :, :length]
