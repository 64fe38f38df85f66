"""The analytic half of the stability report: the largest Lyapunov exponent of each layer's recurrence.

Per channel d and state n, Mamba's scan multiplies the state by exp(Δ_t[d]·A[d,n]) at every step, so
the exponent of that linear time-varying recurrence is the time average of Δ_t[d]·A[d,n]; the layer's
largest exponent λ is the max over (d, n) and the recurrence contracts (is stable) when λ < 0.
Mamba-2 has one Δ and one scalar A per head, so its (d, n) is a head. Because A is constant in time,
the average is A[d,n] · mean_t Δ_t[d]; Δ > 0 always (softplus), so the sign comes from A.

Δ is recomputed from each mixer's real input, captured by a forward pre-hook, through the same
weights the mixer forwards use (LoRA folded in via `effective_weight`). A is read by `ssm_A` alone,
so a test can swap that one function to plant an unstable A.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from worker.engine.companion_scan import all_roots
from worker.engine.families import mixer_engine, model_layers
from worker.engine.sparse_mamba import STABLE_FLOOR, is_companion, is_stable, mixer_roots


@dataclass(frozen=True)
class LayerLyapunov:
    layer: int
    lyapunov_exponent: float  # λ: max over channels/states of the time-averaged log step contraction
    mean_delta: float  # Δ averaged over batch, time and channels (the step size the model chose)
    stable: bool  # λ < 0


@dataclass(frozen=True)
class NotApplicable:
    """A hybrid's layer part without a recurrence (attention, MLP, experts): it has no Lyapunov exponent."""

    layer: int
    kind: str


def ssm_layers(model: nn.Module) -> list[tuple[int, nn.Module]]:
    """(layer index, SSM mixer) of each block with an SSM part, in layer order."""
    return [(i, parts["ssm"]) for i, (_, parts) in enumerate(model_layers(model)) if "ssm" in parts]


def not_applicable(model: nn.Module) -> list[NotApplicable]:
    """Every part of `model`'s blocks that is not an SSM mixer; empty for a pure SSM model."""
    layers = enumerate(model_layers(model))
    return [NotApplicable(i, kind) for i, (_, parts) in layers for kind in parts if kind != "ssm"]


def ssm_A(mixer: nn.Module) -> Tensor:
    """The per-step decay rates in fp32: (d_inner, n) for Mamba, (heads,) for Mamba-2.

    Diagonal A: A = -exp(A_log) itself (ST-Mamba2: the constrained value the forwards read).
    SC/SO A (a companion matrix per channel): the real parts of its n roots. A = V diag(λ) V^{-1} with V
    constant in time, so in V's coordinates the recurrence is diagonal and the state along root λ_i is
    scaled by |exp(Δ_t λ_i)| = exp(Δ_t Re λ_i) per step: Re λ_i plays the role of a diagonal A entry, and
    the exponent of the diagonalised recurrence is the exponent of the original one (V is fixed and
    invertible, so it changes norms by a bounded factor only)."""
    if is_companion(mixer):
        return all_roots(mixer_roots(mixer)).real.float()
    if is_stable(mixer):
        return -torch.exp(mixer.A_log.float()).clamp(min=STABLE_FLOOR)
    return -torch.exp(mixer.A_log.float())


def layer_lyapunov(layer: int, mixer: nn.Module, hidden: Tensor) -> LayerLyapunov:
    delta = mixer_engine(mixer).delta(mixer, hidden)  # (b, l, d_inner) or (b, l, heads)
    A = ssm_A(mixer)  # (d_inner, n) or (heads,)
    mean_delta = delta.mean(dim=(0, 1))  # (d_inner,) or (heads,)
    rates = mean_delta.view(-1, *[1] * (A.dim() - 1)) * A  # time-averaged Δ·A per (d, n) or head
    lam = float(rates.max())
    return LayerLyapunov(layer, lam, float(mean_delta.mean()), lam < 0)


@contextmanager
def capture_each(modules: list[nn.Module], *, inputs: bool) -> Iterator[list[Tensor | None]]:
    """While active, each forward stores, per module, the hidden states it received (`inputs`) or its
    (first) output, detached: (b, l, d_model) each."""
    captured: list[Tensor | None] = [None] * len(modules)

    def hook(index: int):
        def store_input(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            captured[index] = (args[0] if args else kwargs["hidden_states"]).detach()

        def store_output(_module: nn.Module, _args: tuple, output: Tensor | tuple) -> None:
            captured[index] = (output[0] if isinstance(output, tuple) else output).detach()

        return store_input if inputs else store_output

    handles = [
        m.register_forward_pre_hook(hook(i), with_kwargs=True) if inputs else m.register_forward_hook(hook(i))
        for i, m in enumerate(modules)
    ]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def lyapunov_exponents(model: nn.Module, inputs: Tensor) -> list[LayerLyapunov]:
    """λ per SSM layer (a hybrid's other layers have none) on the token batch `inputs` (b, l), run in fp32."""
    layers = ssm_layers(model)
    with capture_each([mixer for _, mixer in layers], inputs=True) as captured:
        model(input_ids=inputs.to(next(model.parameters()).device), use_cache=False)
    return [layer_lyapunov(i, m, h) for (i, m), h in zip(layers, captured, strict=True)]
