"""The mixtures' experts as transformers runs them, and whether a CUDA graph can capture them.

transformers 5 runs an experts module (a mixture's 3-D expert weights) through the implementation its
config names, read at every call (`config._experts_implementation`; `use_experts_implementation` in
transformers/integrations/moe.py), `grouped_mm` by default. `grouped_mm` sorts the routed tokens by expert
and counts each expert's on the device, then calls torch's grouped GEMM with those offsets. On a GPU of
compute capability 9.x or 10.x, with bf16 operands, torch runs its CUTLASS kernel, which reads the offsets
on the device; anywhere else it loops over the groups after copying the offsets to the host
(`_grouped_mm_cuda` in aten/src/ATen/native/cuda/GroupedBlas.cpp), as the `eager` implementation loops over
the experts hit. No CUDA graph can capture that host sync.
"""

import torch
from torch import nn

from worker.engine.families import model_layers
from worker.engine.lora_weights import base_layer

GROUPED_MM = "grouped_mm"
# The compute capability majors (Hopper, Blackwell data center) and the dtype of torch's sync-free grouped GEMM.
SYNC_FREE_MAJORS = (9, 10)
SYNC_FREE_DTYPE = torch.bfloat16


def experts_modules(model: nn.Module) -> list[nn.Module]:
    """The experts module of every mixture of a causal LM (LoRA-wrapped or not: peft wraps it once per adapted
    weight), in layer order."""
    return [base_layer(parts["moe"].experts) for _, parts in model_layers(model) if "moe" in parts]


def implementation(experts: nn.Module) -> str | None:
    """The implementation transformers runs `experts` with (its forward reads the config it keeps)."""
    return getattr(getattr(experts, "config", None), "_experts_implementation", None)


def grouped_mm_sync_free(device: torch.device) -> bool:
    """Whether torch's grouped GEMM of bf16 operands runs without a host sync on `device`."""
    has_grouped_mm = hasattr(torch.nn.functional, "grouped_mm") or hasattr(torch, "_grouped_mm")
    return has_grouped_mm and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] in SYNC_FREE_MAJORS


def experts_capturable(model: nn.Module, device: torch.device) -> bool:
    """True when a CUDA graph on `device` can capture `model`'s experts: it has none, or every one runs
    `grouped_mm` with weights in bf16 (its frozen base under bf16 training; LoRA folds into them in their
    dtype) on a device where that runs without a host sync."""
    experts = experts_modules(model)
    return not experts or (
        grouped_mm_sync_free(device)
        and all(
            implementation(e) == GROUPED_MM and all(p.dtype == SYNC_FREE_DTYPE for p in e.parameters()) for e in experts
        )
    )


def use_grouped_mm(model: nn.Module) -> None:
    """Run every experts module of `model` with `grouped_mm` (transformers' default, which a model's config
    can override)."""
    if any(implementation(e) != GROUPED_MM for e in experts_modules(model)):
        lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        lm.set_experts_implementation(GROUPED_MM)
