"""The empirical half of the stability report: does low-precision error grow exponentially along the sequence?

The same token batch runs through the model in fp32 and under fp16 / bf16 autocast. Per layer and
position t, the relative divergence of the layer's output (the residual stream) is
    e_t = mean over the batch of ||h_lp[t] - h_fp32[t]|| / ||h_fp32[t]||.
A Lyapunov-stable recurrence forgets old rounding errors, so e_t stays flat or grows slowly; an unstable
one amplifies them by exp(λ) per step. The growth rate is the least-squares slope of log e_t against t.
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from worker.engine.families import engine_of
from worker.engine.precision import PrecisionPolicy
from worker.engine.spec import Precision
from worker.evaluation.stability.lyapunov import capture_each

# Nats per position. Polynomial growth of rounding error (√t, t) over L positions fits a slope of at
# most 3/L (0.023 at L = 128), while an exponent of 0.05 doubles the error every 14 tokens.
GROWTH_THRESHOLD = 0.05
_TINY = 1e-12  # floor for norms and divergences, so identical states give log(1e-12), not -inf


@dataclass(frozen=True)
class LayerDivergence:
    layer: int
    per_position: list[float]  # e_t for t = 0 .. l-1
    slope: float  # least-squares slope of log e_t against t


def growth_rate(curve: Tensor) -> float:
    """Least-squares slope of log(curve) against position; curve: (l,)."""
    if curve.numel() < 2:
        return 0.0
    y = curve.double().clamp_min(_TINY).log()
    t = torch.arange(len(y), dtype=torch.float64)
    t_centered = t - t.mean()
    return float((t_centered * (y - y.mean())).sum() / (t_centered**2).sum())


def layer_blocks(model: nn.Module) -> list[nn.Module]:
    """The block around each SSM mixer: its output is the layer's output, the residual stream."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    engine = engine_of(lm)
    return [block for block in engine.layers(engine.backbone(lm)) if "ssm" in engine.layer_parts(block)]


@torch.no_grad()
def layer_outputs(model: nn.Module, inputs: Tensor, precision: Precision) -> list[Tensor]:
    """Each block's output (b, l, d_model) in fp32, in layer order."""
    device = next(model.parameters()).device
    blocks = layer_blocks(model)
    with capture_each(blocks, inputs=False) as captured, PrecisionPolicy(precision, device).autocast():
        # Asking for hidden states makes the backbone run its own loop over the blocks: the fused CUDA
        # loop (mamba_forward.backbone_forward) calls the norm kernel and each mixer directly, so the
        # blocks' forward hooks would never fire.
        model(input_ids=inputs.to(device), use_cache=False, output_hidden_states=True)
    missing = [i for i, c in enumerate(captured) if c is None]
    if missing or not blocks:
        raise RuntimeError(f"no output captured for layers {missing} of {len(blocks)}: the forward bypassed them")
    return [c.float() for c in captured if c is not None]


def divergence(model: nn.Module, inputs: Tensor, precision: Precision) -> list[LayerDivergence]:
    """Per layer, e_t of `precision` against fp32 on the token batch `inputs` (b, l)."""
    reference = layer_outputs(model, inputs, "fp32")
    low = layer_outputs(model, inputs, precision)
    result = []
    for layer, (h32, hlp) in enumerate(zip(reference, low, strict=True)):
        error = (hlp - h32).norm(dim=-1) / h32.norm(dim=-1).clamp_min(_TINY)  # (b, l)
        curve = error.mean(dim=0).cpu()  # (l,)
        result.append(LayerDivergence(layer, curve.tolist(), growth_rate(curve)))
    return result
