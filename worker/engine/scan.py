"""Mamba's selective scan in pure torch: the reference recurrence and a chunked twin for the CPU.

Both compute, per batch b, channel d and state n (shapes as in mamba-ssm's `selective_scan_fn`):

    dt_t  = softplus(delta_t + delta_bias)                      u, delta, z: (b, d, l)
    h_t   = exp(dt_t * A) * h_{t-1} + dt_t * B_t * u_t          A: (d, n); B, C: (b, n, l)
    y_t   = <h_t, C_t> + D * u_t,  then  y_t * silu(z_t)        D: (d,)

With `reset` (b, l) bool, h_{t-1} is dropped where reset_t (exp(dt_t * A) = 0 there, the input term
kept): a packed row's documents then each scan from a zero state (worker/engine/documents.py).

`selective_scan_reference` is the executable spec: one Python step per token. The chunked version
gives the same numbers with about 3·sqrt(l) Python steps instead of l, each over many tokens at once,
and a backward written out (the same recurrence, run backwards in time), which is what makes a LoRA
step on the CPU fast: the work is the same, the per-step and autograd overhead and the full-size
(b, d, l, n) tensors kept or written shrink (bench/RESULTS.md).
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def step_size(delta: Tensor, delta_bias: Tensor | None, softplus: bool = True) -> Tensor:
    """dt = softplus(delta + delta_bias), (b, d, l) in fp32; `softplus` False: delta + delta_bias."""
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[None, :, None]
    return F.softplus(delta) if softplus else delta


def skip_and_gate(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None) -> Tensor:
    """y + D·u, gated by silu(z); (b, d, l) in u's dtype."""
    if D is not None:
        y = y + D.float()[None, :, None] * u.float()
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(u.dtype)


def _discretize(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, delta_bias: Tensor | None, softplus: bool, reset: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Log-decay dt·A (-inf where reset) and input dt·B·u, both (b, d, l, n) in fp32."""
    dt = step_size(delta, delta_bias, softplus)  # (b, d, l)
    log_decay = dt[..., None] * A.float()[None, :, None, :]
    if reset is not None:
        log_decay = log_decay.masked_fill(reset[:, None, :, None], -torch.inf)
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
    *,
    delta_softplus: bool = True,
    reset: Tensor | None = None,
) -> Tensor:
    """`delta_softplus` False: dt = delta + delta_bias, as mamba-ssm's kernels take it."""
    log_decay, dBu = _discretize(u, delta, A, B, delta_bias, delta_softplus, reset)
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
    *,
    reset: Tensor | None = None,
) -> Tensor:
    dt = step_size(delta, delta_bias)  # (b, d, l)
    c = chunk or max(1, math.isqrt(u.shape[-1]))
    y = _SelectiveScan.apply(dt, dt * u.float(), A.float(), B.float(), C.float(), c, reset)
    return skip_and_gate(y, u, D, z)


# exp(-RESET_EXPONENT) is 0 in fp32 (below its smallest subnormal, 1.4e-45 = exp(-103.3)).
RESET_EXPONENT = 128.0


def scan_with_resets(scan: Callable[..., Tensor], *inputs: Tensor | None, reset: Tensor) -> Tensor:
    """The selective scan of `inputs` (u, delta, A, B, C, D, z, delta_bias) with resets, through a scan that
    has none: mamba-ssm's `selective_scan_fn` (same arguments, dt taken as given). Where reset,
    dt' = RESET_EXPONENT / min|A| per channel, so exp(dt'·A) is exactly 0, and u' = u·dt/dt', so dt'·B·u' is
    dt·B·u to rounding. D·u and the gate are applied here, on the true u. dt' is a constant (detached): the
    true recurrence does not depend on it, and u' carries dt's gradient."""
    u, delta, A, B, C, D, z, delta_bias = inputs
    dt = step_size(delta, delta_bias)  # (b, d, l)
    big = (RESET_EXPONENT / -A.detach().float().max(dim=-1).values)[None, :, None]  # (1, d, 1); A < 0
    at_reset = reset[:, None, :]
    u_kept = torch.where(at_reset, u.float() * dt / big, u.float())
    y = scan(u_kept, torch.where(at_reset, big, dt), A, B.float(), C.float(), None, None, None, delta_softplus=False)
    return skip_and_gate(y, u, D, z)


class _SelectiveScan(torch.autograd.Function):
    """y_t = <h_t, C_t> with h_t = exp(dt_t·A) * h_{t-1} + dtu_t·B_t, and its backward written out.

    Left to autograd, the (b, d, l, n) log-decay and input would be kept, and each broadcast product
    reduced in a pass of its own; here only the decays and the states are kept, and each gradient is
    one multiply-and-reduce or one matrix product. dt, dtu: (b, d, l); A: (d, n); B, C: (b, n, l).
    A zero decay where `reset` needs nothing more in backward: it zeroes those tokens' dt·A gradient too.

    The (b, d, l, n) tensors are made step-major within chunks, (b, d, c, chunks, n) (see `_recur`): each
    of the recurrence's steps then reads and writes runs of chunks·n contiguous values, not n. The (b, d, l)
    and (b, n, l) tensors are reordered to match (small copies), and padded with zeros to a whole number of
    chunks: dt = 0 there is a decay of 1 and a zero input, after every real token forwards and giving
    nothing backwards."""

    @staticmethod
    def forward(
        ctx, dt: Tensor, dtu: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int, reset: Tensor | None
    ) -> Tensor:
        # B and C as (b, c, chunks, n), n contiguous as in the full-size tensors they multiply.
        Bc, Cc = (_step_major(t, chunk).permute(0, 2, 3, 1).contiguous() for t in (B, C))
        dt_c, dtu_c = _step_major(dt, chunk), _step_major(dtu, chunk)  # (b, d, c, chunks)
        decay = _product(dt_c, A[:, None, None, :]).exp_()  # (b, d, c, chunks, n)
        if reset is not None:  # the state entering those tokens is dropped
            decay.masked_fill_(_step_major(reset, chunk)[:, None, :, :, None], 0)
        states = _recur(decay, _product(dtu_c, Bc[:, None]), in_place=True)
        ctx.save_for_backward(dt_c, dtu_c, A, Bc, Cc, decay, states)
        ctx.length = dt.shape[-1]
        return _natural(_sum_over_state(states, Cc), ctx.length)

    @staticmethod
    def backward(ctx, grad_y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, None, None]:
        dt_c, dtu_c, A, Bc, Cc, decay, states = ctx.saved_tensors
        chunk, length = states.shape[2], ctx.length
        grad_y = _step_major(grad_y, chunk)
        g = _recur(decay, _product(grad_y, Cc[:, None]), reverse=True, in_place=True)  # (b, d, c, chunks, n)
        # (b, c, chunks, n) -> (b, n, l)
        grad_C = _natural((states * grad_y[..., None]).sum(1).permute(0, 3, 1, 2), length)
        grad_B = _natural((g * dtu_c[..., None]).sum(1).permute(0, 3, 1, 2), length)
        grad_dtu = _natural(_sum_over_state(g, Bc), length)
        # d h_t / d log_decay_t = decay_t · h_{t-1}, zero at t = 0; written over g, which is read no more.
        # h_{t-1} is the step before in the chunk, or the last step of the chunk before.
        grad_log_decay = g
        grad_log_decay[:, :, 1:].mul_(decay[:, :, 1:]).mul_(states[:, :, :-1])
        grad_log_decay[:, :, 0, 1:].mul_(decay[:, :, 0, 1:]).mul_(states[:, :, -1, :-1])
        grad_log_decay[:, :, 0, 0] = 0
        b, d, _, _, n = g.shape
        by_step = grad_log_decay.view(b, d, -1, n)  # (b, d, c·chunks, n)
        grad_dt = _natural((by_step @ A[:, :, None]).view(dt_c.shape), length)  # (b, d, l)
        grad_A = (by_step.transpose(-1, -2) @ dt_c.view(b, d, -1, 1)).sum(0)[..., 0]  # (d, n)
        return grad_dt, grad_dtu, grad_A, grad_B, grad_C, None, None


def _step_major(t: Tensor, chunk: int) -> Tensor:
    """(..., l) -> (..., c, chunks), contiguous: position k·c + j at [j, k], zero-padded to a whole number of
    chunks. Broadcast into the full-size products, a strided view would be gathered there."""
    pad = -t.shape[-1] % chunk
    if pad:
        t = F.pad(t, (0, pad))
    return t.unflatten(-1, (-1, chunk)).transpose(-1, -2).contiguous()


def _natural(t: Tensor, length: int) -> Tensor:
    """`_step_major`'s inverse: (..., c, chunks) -> (..., length)."""
    return t.transpose(-1, -2).flatten(-2)[..., :length]


def _reset(decay: Tensor, reset: Tensor | None) -> Tensor:
    """Zero `decay` (b, d, l, n) in place where `reset` (b, l): the state entering those tokens is dropped."""
    return decay if reset is None else decay.masked_fill_(reset[:, None, :, None], 0)


def _product(x: Tensor, by_state: Tensor) -> Tensor:
    """x[..., None] * by_state as a contiguous (..., n) tensor, whatever the inputs' strides: the
    scan's steps slice it, and a broadcast product would otherwise follow x's layout."""
    out = torch.empty((*x.shape, by_state.shape[-1]), dtype=x.dtype, device=x.device)
    return torch.mul(x[..., None], by_state, out=out)


def _sum_over_state(states: Tensor, by_state: Tensor) -> Tensor:
    """sum_n states[b, d, ..., n] · by_state[b, ..., n] -> (b, d, ...)."""
    return (states * by_state[:, None]).sum(-1)


def chunked_states(log_decay: Tensor, dBu: Tensor, chunk: int | None = None, reset: Tensor | None = None) -> Tensor:
    """States h_t = exp(log_decay_t) * h_{t-1} + dBu_t, all (b, d, l, n), in about 3·sqrt(l) steps; h_{t-1} is
    dropped where `reset` (b, l).

    Works for complex inputs too (companion_scan.py runs diagonalized companion states through it)."""
    return _Recurrence.apply(log_decay, dBu, chunk or max(1, math.isqrt(log_decay.shape[2])), reset)


class _Recurrence(torch.autograd.Function):
    """The recurrence with a hand-written backward, which is the same recurrence run backwards in time.

    Left to autograd, every step's slicing would cost a full-size zero tensor in backward, and every
    step's intermediates would be kept; here backward keeps only the decays and the states."""

    @staticmethod
    def forward(ctx, log_decay: Tensor, dBu: Tensor, chunk: int, reset: Tensor | None) -> Tensor:
        decay = _reset(torch.exp(log_decay), reset)
        states = _recur_in_time(decay, dBu, chunk)
        ctx.save_for_backward(decay, states)
        ctx.chunk = chunk
        return states

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None, None]:
        decay, states = ctx.saved_tensors
        scratch = grad.clone(memory_format=torch.contiguous_format)  # the backward overwrites it
        g, grad_log_decay = _recurrence_backward(decay, states, scratch, ctx.chunk)
        return grad_log_decay, g, None, None


def _recurrence_backward(decay: Tensor, states: Tensor, grad: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """The gradients of the states' loss with respect to dBu (g) and to log_decay, given `grad` by state
    (which this overwrites). (Complex: conj, PyTorch's convention for complex gradients.)"""
    # g_t = grad_t + conj(decay_{t+1}) · g_{t+1}: the same recurrence, backwards in time.
    g = _recur_in_time(decay.conj(), grad, chunk, reverse=True, in_place=True)
    # d h_t / d log_decay_t = decay_t · h_{t-1}, zero at t = 0 (the state before the first token is 0).
    grad_log_decay = torch.empty_like(g)
    grad_log_decay[:, :, 0] = 0
    tail = torch.mul(decay[:, :, 1:], states[:, :, :-1], out=grad_log_decay[:, :, 1:])
    if tail.is_complex():
        tail.conj_physical_()
    tail.mul_(g[:, :, 1:])
    return g, grad_log_decay


def _recur_in_time(decay: Tensor, x: Tensor, c: int, reverse: bool = False, in_place: bool = False) -> Tensor:
    """`_recur` over dim 2 of (b, d, l, n) tensors in time order, in chunks of c steps. `in_place` writes h
    over x (contiguous)."""
    b, d, length, n = x.shape
    n_chunks = -(-length // c)
    pad = n_chunks * c - length
    if pad:  # zero input (and decay) past the end: no effect on real tokens, whichever the direction
        decay = F.pad(decay, (0, 0, 0, pad))
        x = F.pad(x, (0, 0, 0, pad))
    by_chunk = (b, d, n_chunks, c, n)
    h = _recur(
        decay.reshape(by_chunk).transpose(2, 3), x.reshape(by_chunk).transpose(2, 3), reverse, in_place or pad > 0
    )
    return h.transpose(2, 3).reshape(b, d, n_chunks * c, n)[:, :, :length]


def _recur(decay: Tensor, x: Tensor, reverse: bool = False, in_place: bool = False) -> Tensor:
    """h_t = decay_t * h_{t-1} + x_t from h_{-1} = 0, without autograd, on (b, d, c, chunks, n) tensors that
    hold position k·c + j at [:, :, j, k] (any strides); `reverse`: its adjoint, h_t = decay_{t+1} * h_{t+1}
    + x_t from h_l = 0, on the same decays (no shifted copy). `in_place` writes h over x.

    Three passes over the chunks of c steps: each chunk's last state from a zero start and the product of its
    decays, all chunks at once (c steps on (b, d, chunks, n) tensors, nothing full-size written); the true state
    entering each chunk, chunk by chunk on those small tensors; then every chunk's steps again from its true
    entering state, all chunks at once, writing h. About 2·c + chunks steps, one full-size write."""
    c = x.shape[2]
    h = x if in_place else torch.empty_like(x)
    # Step t of a chunk multiplies the state it receives by decay_t forwards, by decay_{t+1} in reverse.
    steps, shift = (range(c - 1, -1, -1), 1) if reverse else (range(c), 0)
    first, *rest = steps
    # 1. Each chunk's last state from a zero start, and the product of the decays its steps apply to the
    #    state entering it (a product of decays <= 1: no overflow).
    last = x[:, :, first].clone()  # (b, d, chunks, n)
    through = torch.ones_like(last) if reverse else decay[:, :, 0].clone()
    for t in rest:
        torch.addcmul(x[:, :, t], decay[:, :, t + shift], last, out=last)
        through.mul_(decay[:, :, t + shift])
    # 2. The state entering each chunk, chunk by chunk. In reverse the state leaving chunk k + 1 reaches chunk
    #    k through decay at chunk k + 1's first step, which is then applied to `last` and `through` alike.
    if reverse:
        last[:, :, 1:].mul_(decay[:, :, 0, 1:])
        through[:, :, 1:].mul_(decay[:, :, 0, 1:])
    entering = torch.zeros_like(last)
    n_chunks = x.shape[3]
    for k in range(n_chunks - 2, -1, -1) if reverse else range(1, n_chunks):
        source = k + 1 if reverse else k - 1
        torch.addcmul(last[:, :, source], through[:, :, source], entering[:, :, source], out=entering[:, :, k])
    # 3. Every chunk's steps from its entering state.
    if reverse:
        torch.add(x[:, :, first], entering, out=h[:, :, first])
    else:
        torch.addcmul(x[:, :, first], decay[:, :, first], entering, out=h[:, :, first])
    previous = first
    for t in rest:
        torch.addcmul(x[:, :, t], decay[:, :, t + shift], h[:, :, previous], out=h[:, :, t])
        previous = t
    return h
