"""What the family tests share: a job on a created tiny model, as they post it (demo data uploaded, fp32,
a fixed seed, a few steps), the LoRA tensors it attached before its first step, and a mixer forward that
bypasses one target's adapter."""

from collections.abc import Callable
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from api.factories import upload
from e2e.factories import demo_slice
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


def upload_demo(client: TestClient, name: str, lines: int) -> str:
    """The id of the first `lines` examples of demo/`name`, uploaded."""
    response = upload(client, demo_slice(name, lines), filename=name)
    assert response.status_code == 200, response.text
    return response.json()["id"]


def job_body(client: TestClient, *, train_lines: int, validation_lines: int | None = None, **fields: Any) -> dict:
    """POST /v1/fine_tuning/jobs's body for the model `tiny`; `fields` add to it or replace its own."""
    body = {
        "model": "tiny",
        "training_file": upload_demo(client, "train.jsonl", train_lines),
        "precision": "fp32",
        "seed": 0,
        "hyperparameters": {"n_epochs": 1, "batch_size": 4, "learning_rate": 1e-2, "max_seq_len": 48},
    }
    if validation_lines is not None:
        body["validation_file"] = upload_demo(client, "valid.jsonl", validation_lines)
    return body | fields


def bypassing(target: str, forward: Callable[..., Any]) -> Callable[..., Any]:
    """A mixer forward reading `target`'s raw weight, its adapter bypassed (stock's fused path, for dt_proj)."""

    def bypassed(mixer: Any, *args: Any, **kwargs: Any) -> Any:
        module = getattr(mixer, target)
        module._disable_adapters = True  # peft's own switch: lora_factors sees no adapter, the weight is W
        try:
            return forward(mixer, *args, **kwargs)
        finally:
            module._disable_adapters = False

    return bypassed
