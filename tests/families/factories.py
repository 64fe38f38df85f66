"""What the family tests share: the LoRA tensors a job attached, as they were before its first step."""

from typing import Any

import pytest
import torch

from worker.engine import trainer


def lora_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA matrices by the names the adapter file stores them under."""
    return {name.replace(".default", ""): p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}


def record_attached_lora(monkeypatch: pytest.MonkeyPatch) -> dict[str, torch.Tensor]:
    """Filled, when the trainer attaches LoRA, with the LoRA tensors as attached (before any step)."""
    initial: dict[str, torch.Tensor] = {}
    real_attach = trainer.attach_lora

    def attach(*args: Any) -> torch.nn.Module:
        model = real_attach(*args)
        initial.update(lora_tensors(model))
        return model

    monkeypatch.setattr(trainer, "attach_lora", attach)
    return initial
