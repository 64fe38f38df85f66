"""Resumable training checkpoints, written without pickle: tensors in safetensors, the rest in JSON.

A checkpoint folder holds everything that makes a resumed run continue exactly as if never stopped:
    trainable.safetensors   trainable parameters by name (LoRA weights, or all weights for full FT)
    optimizer.safetensors   optimizer state tensors, keyed "{param index}.{key}" (e.g. "3.exp_avg")
    optimizer.json          optimizer param_groups and any non-tensor per-param state
    rng.safetensors         torch CPU generator state ("cpu") and each CUDA device's ("cuda.{i}"), uint8
    trainer_state.json      step, data position, scheduler, precision (grad scaler), python `random`, metrics
It is written to a sibling temp folder and renamed into place, so a folder that exists is complete.
"""

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from worker.engine.data import DataPosition
from worker.engine.precision import PrecisionPolicy


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def all_finite(params: dict[str, nn.Parameter]) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in params.values())


def _optimizer_files(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "state": scalars}


def _load_optimizer(optimizer: torch.optim.Optimizer, folder: Path) -> None:
    meta = json.loads((folder / "optimizer.json").read_text())
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in meta["state"].items()}
    for name, tensor in load_file(str(folder / "optimizer.safetensors")).items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors |= {f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    return tensors


def _load_rng(tensors: dict[str, torch.Tensor], python_state: list[Any]) -> None:
    torch.set_rng_state(tensors["cpu"])
    cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors) - 1)]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = python_state
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(
    folder: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    precision: PrecisionPolicy,
    step: int,
    position: DataPosition,
    metrics: dict[str, Any],
) -> Path:
    """Write the checkpoint atomically into `folder` (replacing one already there) and return it."""
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    params = {n: p.detach().cpu().contiguous() for n, p in trainable_parameters(model).items()}
    save_file(params, str(tmp / "trainable.safetensors"))
    tensors, meta = _optimizer_files(optimizer)
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "optimizer.json").write_text(json.dumps(meta))
    save_file(_rng_tensors(), str(tmp / "rng.safetensors"))
    version, internal, gauss = random.getstate()
    state = {
        "step": step,
        "position": {"epoch": position.epoch, "batch": position.batch},
        "scheduler": scheduler.state_dict(),
        "precision": precision.state_dict(),
        "python_random": [version, list(internal), gauss],
        "metrics": metrics,
    }
    (tmp / "trainer_state.json").write_text(json.dumps(state))
    if folder.exists():  # the same step written again (e.g. stopped right after resuming)
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old)
    else:
        tmp.rename(folder)
    return folder


def load_checkpoint(
    folder: Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    precision: PrecisionPolicy,
) -> tuple[int, DataPosition, dict[str, Any]]:
    """Restore everything `save_checkpoint` wrote; returns (step, data position, metrics)."""
    params = trainable_parameters(model)
    saved = load_file(str(folder / "trainable.safetensors"))
    if saved.keys() != params.keys():
        missing, extra = sorted(params.keys() - saved.keys()), sorted(saved.keys() - params.keys())
        raise ValueError(f"checkpoint {folder} does not match the model: missing {missing[:3]}, extra {extra[:3]}")
    with torch.no_grad():
        for name, value in saved.items():
            params[name].copy_(value)
    _load_optimizer(optimizer, folder)
    state = json.loads((folder / "trainer_state.json").read_text())
    scheduler.load_state_dict(state["scheduler"])
    precision.load_state_dict(state["precision"])
    _load_rng(load_file(str(folder / "rng.safetensors")), state["python_random"])
    return state["step"], DataPosition(**state["position"]), state["metrics"]
