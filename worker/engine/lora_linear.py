"""A LoRA linear layer (attention, MLP, any plain projection) as one autograd function: W·x + Σ s·B·(A·x).

peft's `lora.Linear` casts the layer's input to the adapter's dtype (fp32 for trainable weights under
mixed precision), which autocast then casts back to half for the matmul, and scales and adds the adapter's
output as separate ops: four passes over a full-size activation forward and as many backward, per adapted
layer. On a ~1B hybrid those copies were a quarter of the step's GPU time, in stock and in ours
(bench/RESULTS.md). Here the input is cast once to the compute dtype, the adapter's output is added into the
base output by the GEMM that makes it (`addmm_`), and the backward does the same for the input's gradient;
the frozen weight gets no gradient. The function is the one peft computes, so adapters save, load and merge
as peft's. Layers run it under autocast only (without it there is no cast to save); layers with dropout,
DoRA, a LoRA bias or mixed adapter batches keep peft's forward.
"""

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from peft.tuners.lora import Linear as LoraLinear
from torch import Tensor, nn


def compute_dtype(x: Tensor, weight: Tensor) -> torch.dtype:
    """What a linear layer's matmul runs in: autocast's half where autocast is on, else the weight's dtype."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else weight.dtype


class LowRankLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, scales: tuple[float, ...], *factors: Tensor):
        dtype = compute_dtype(x, weight)
        ctx.input_dtype = x.dtype
        ctx.scales = scales
        ctx.has_bias = bias is not None
        with torch.autocast(x.device.type, enabled=False):
            rows = x.reshape(-1, x.shape[-1]).to(dtype)
            weight = weight.to(dtype)
            factors = tuple(f.to(dtype) for f in factors)
            out = F.linear(rows, weight, None if bias is None else bias.to(dtype))
            lows = []
            for scale, lora_A, lora_B in zip(scales, factors[::2], factors[1::2], strict=True):
                lows.append(rows @ lora_A.t())  # (n, r)
                out.addmm_(lows[-1], lora_B.t(), alpha=scale)
        ctx.save_for_backward(rows, weight, *factors, *lows)
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, dout: Tensor):
        rows, weight, *rest = ctx.saved_tensors
        n_adapters = len(ctx.scales)
        factors, lows = rest[: 2 * n_adapters], rest[2 * n_adapters :]
        with torch.autocast(dout.device.type, enabled=False):
            d = dout.reshape(-1, dout.shape[-1]).to(rows.dtype)
            dx = d @ weight if ctx.needs_input_grad[0] else None
            dfactors = []
            for scale, lora_A, lora_B, low in zip(ctx.scales, factors[::2], factors[1::2], lows, strict=True):
                through_B = d @ lora_B  # (n, r)
                if dx is not None:
                    dx.addmm_(through_B, lora_A, alpha=scale)
                dfactors += [scale * (through_B.t() @ rows), scale * (d.t() @ low)]
            dweight = d.t() @ rows if ctx.needs_input_grad[1] else None
            dbias = d.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        if dx is not None:
            dx = dx.view(*dout.shape[:-1], rows.shape[-1]).to(ctx.input_dtype)
        originals = ctx.needs_input_grad[4:]
        dfactors = [g if wanted else None for g, wanted in zip(dfactors, originals, strict=True)]
        return dx, dweight, dbias, None, *dfactors


def _plain_adapters(layer: LoraLinear) -> list[str] | None:
    """The active adapters when every one is plain LoRA (no dropout, variant or bias), else None."""
    if layer.disable_adapters or layer.merged or type(layer.get_base_layer()) is not nn.Linear:
        return None
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    plain = all(
        a not in layer.lora_variant and isinstance(layer.lora_dropout[a], nn.Identity) and layer.lora_B[a].bias is None
        for a in active
    )
    return active if plain else None


def low_rank_forward(layer: LoraLinear, peft_forward: Callable[..., Tensor], x: Tensor, *args, **kwargs) -> Tensor:
    """`layer`'s output through `LowRankLinear` where peft's forward would compute plain LoRA under autocast,
    else peft's (without autocast there are no casts to save: the tiny CPU step was 5% slower through it)."""
    active = _plain_adapters(layer)
    if active is None or args or kwargs or not torch.is_autocast_enabled(x.device.type):
        return peft_forward(x, *args, **kwargs)
    base = layer.get_base_layer()
    factors = [w for a in active for w in (layer.lora_A[a].weight, layer.lora_B[a].weight)]
    return LowRankLinear.apply(x, base.weight, base.bias, tuple(layer.scaling[a] for a in active), *factors)


def install_low_rank_linears(model: nn.Module) -> nn.Module:
    """Route every peft LoRA linear layer of `model` through `low_rank_forward` (idempotent)."""
    for module in model.modules():
        if type(module) is LoraLinear and not hasattr(module, "peft_forward"):
            module.peft_forward = module.forward
            module.forward = partial(low_rank_forward, module, module.peft_forward)
    return model
