"""The training precision as one small policy the trainer asks: how to run forward, scale loss, step.

- fp32: plain.
- bf16: autocast to bf16; trainable parameters stay fp32 (the optimizer updates them in full precision)
  while frozen weights are stored in bf16 to halve their memory. The SSM's own parameters (A_log, D,
  dt biases) and norm weights stay fp32: they are tiny, and A = -exp(A_log) is precision-sensitive.
- fp16: autocast to fp16 with dynamic loss scaling (GradScaler). A step whose gradients overflow is
  skipped and counted; the scale backs off and training goes on.
"""

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from worker.engine.families import engine_of
from worker.engine.spec import Precision

MAX_GRAD_NORM = 1.0


class PrecisionPolicy:
    def __init__(self, precision: Precision, device: torch.device) -> None:
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"unknown precision {precision!r}")
        self.precision = precision
        self.device = device
        self.skipped_steps = 0
        # The last step's gradient norm before clipping (a device tensor: reading it waits for the step).
        self.grad_norm: torch.Tensor | None = None
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def prepare(self, model: nn.Module) -> None:
        """Store frozen weights in bf16 (bf16 only); call after the trainable set is decided."""
        if self.precision != "bf16":
            return
        keep_fp32 = engine_of(model).keep_fp32
        for name, param in model.named_parameters():
            if not param.requires_grad and not name.endswith(keep_fp32):
                param.data = param.data.to(torch.bfloat16)

    def autocast(self, cache_enabled: bool = True) -> contextlib.AbstractContextManager:
        """cache_enabled=False under CUDA-graph capture: cached casts would outlive the graph's pool."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype, cache_enabled=cache_enabled)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return self.scaler.scale(loss)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Clip and apply the gradients; False when fp16 overflow made the scaler skip the step."""
        self.scaler.unscale_(optimizer)  # no-op when disabled; clipping must see true gradients
        self.grad_norm = torch.nn.utils.clip_grad_norm_(list(_params(optimizer)), MAX_GRAD_NORM)
        if not self.scaler.is_enabled():
            optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        # The scaler only lowers its scale when it found inf/nan gradients and skipped the step.
        applied = self.scaler.get_scale() >= scale
        self.skipped_steps += not applied
        return applied

    def state_dict(self) -> dict[str, Any]:
        """JSON-able: the scaler's scale and growth tracker, and the skipped-step count."""
        return {"scaler": self.scaler.state_dict(), "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.skipped_steps = state["skipped_steps"]


def _params(optimizer: torch.optim.Optimizer) -> Iterator[torch.Tensor]:
    for group in optimizer.param_groups:
        yield from group["params"]
