"""The weights our mixer forwards hand the fused kernels: W, or W + (alpha / r) · B · A under LoRA.

Built with autograd on every call, so the kernel's weight gradient flows on into A and B and every code
path (fused kernel, torch scan, reference) computes the same function. Why the kernels need it:
lora_fold.py.
"""

from dataclasses import dataclass

import torch
from peft.tuners.lora import LoraLayer
from torch import Tensor, nn


@dataclass(frozen=True)
class LoraFactors:
    A: Tensor  # (r, in)
    B: Tensor  # (out, r)
    scale: float
    dropout: nn.Module


def lora_factors(module: nn.Module) -> list[LoraFactors]:
    """The active adapters of a LoRA layer; empty for a plain module or a merged / disabled adapter."""
    if not isinstance(module, LoraLayer) or module.disable_adapters or module.merged:
        return []
    return [
        LoraFactors(
            module.lora_A[name].weight, module.lora_B[name].weight, module.scaling[name], module.lora_dropout[name]
        )
        for name in module.active_adapters
        if name in module.lora_A
    ]


def effective_weight(module: nn.Module) -> Tensor:
    """The weight a fused kernel must read: W itself, or W + scale·B·A for an active LoRA layer."""
    weight = base_layer(module).weight
    for f in lora_factors(module):
        # W + (scale·B)·A in one GEMM with W as the addend: no full-size scale or add pass.
        weight = torch.addmm(weight, (f.scale * f.B).to(weight.dtype), f.A.to(weight.dtype))  # (out, in)
    return weight


def base_layer(module: nn.Module) -> nn.Module:
    """The wrapped nn.Linear of a LoRA layer (for its bias), or the module itself."""
    return module.get_base_layer() if isinstance(module, LoraLayer) else module


def adapted_weight(name: str, module: LoraLayer) -> tuple[str, Tensor]:
    """The base weight the LoRA layer `name` adapts (what merging it changes), with that weight's name: the
    wrapped layer's `weight`, or the parameter a peft ParamWrapper adapts (a mixture's 3-D expert weight; a
    module's second adapted parameter is wrapped again, at `.base_layer`)."""
    parameter = getattr(module, "parameter_name", None)
    if parameter is None:
        return f"{name}.weight", base_layer(module).weight
    return f"{name.replace('.base_layer', '')}.{parameter}", getattr(module.get_base_layer(), parameter)
