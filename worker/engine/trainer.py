"""Fine-tune a Mamba / Mamba-2 model: one linear recipe (setup, resume, train, validate, save).

Loss is the mean cross-entropy over trained target tokens (see data.py for which tokens train).
The learning rate warms up linearly for `warmup_steps`, then follows a cosine down to 10% of peak.
"""

import json
import math
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worker.engine.adapted_layers import adapted_layers, describe
from worker.engine.checkpoint import (
    all_finite,
    load_checkpoint,
    save_checkpoint,
    trainable_parameters,
)
from worker.engine.cuda_graph import WARMUP_STEPS as GRAPH_WARMUP_STEPS
from worker.engine.cuda_graph import ForwardBackward
from worker.engine.data import (
    IGNORE,
    Batch,
    Blocks,
    DataPosition,
    batches,
    load_blocks,
    next_position,
    steps_per_epoch,
)
from worker.engine.divergence import DivergenceCheck
from worker.engine.experts import experts_capturable, grouped_mm_sync_free, use_grouped_mm
from worker.engine.heap import retained_heap
from worker.engine.kernels import fused_kernels_available
from worker.engine.loading import load_base, pick_device
from worker.engine.lora_fold import attach_lora, merge_adapter, save_adapter
from worker.engine.lora_gradients import LoraGradientCheck
from worker.engine.loss import next_token_loss
from worker.engine.mamba_forward import set_activation_recompute
from worker.engine.memory import LOWER, ModelSize, StepShape, check_fits, device_budget, is_out_of_memory
from worker.engine.precision import PrecisionPolicy
from worker.engine.sparse_mamba import graph_capturable
from worker.engine.spec import (
    InsufficientMemory,
    Progress,
    TrainHooks,
    TrainingStopped,
    TrainResult,
    TrainSpec,
)

LOSS_WINDOW = 10  # the reported train_loss is the mean of this many last steps
# An attempt's first steps compile kernels (Triton), warm the allocator and capture the CUDA graph: they
# are left out of the reported tokens/s, as the step benchmark leaves out its warm-up.
WARMUP_STEPS = GRAPH_WARMUP_STEPS + 1
MIN_LR_RATIO = 0.1


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Multiplier of the peak learning rate for optimizer step `step` (0-based)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def evaluate(model: nn.Module, blocks: Blocks, batch_size: int, policy: PrecisionPolicy) -> float:
    """Mean loss per trained token over all of `blocks`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(blocks.inputs), batch_size):
        rows = slice(start, start + batch_size)
        batch = Batch(blocks.inputs[rows], blocks.targets[rows], blocks.documents[rows]).to(device)
        n = int((batch.targets != IGNORE).sum())
        with policy.autocast():
            loss = next_token_loss(model, *batch)
        total, count = total + loss.item() * n, count + n
    model.train(was_training)
    return total / count  # load_blocks refuses a file without trained tokens


def throughput(state: dict[str, Any]) -> float:
    """Tokens/s of the steps past each attempt's warm-up; of all steps while there are none yet."""
    if state["steady_seconds"] > 0:
        return state["steady_tokens"] / state["steady_seconds"]
    return state["trained_tokens"] / state["train_seconds"]


def peak_memory(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def _prune_checkpoints(keep: Path) -> None:
    for folder in keep.parent.glob("step-*"):
        if folder != keep:
            shutil.rmtree(folder, ignore_errors=True)


def train(spec: TrainSpec, hooks: TrainHooks | None = None) -> TrainResult:
    """Raises InsufficientMemory when a step would not fit the device (before training) or an
    allocation failed, TrainingDiverged when the loss stopped being finite, TrainingStopped on a stop."""
    try:
        with retained_heap(enabled=pick_device(spec.device).type == "cpu"):
            return _train(spec, hooks or TrainHooks())  # a fresh one per call: its callables are not shared state
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        first_line = str(error).splitlines()[0][:300]
        raise InsufficientMemory(f"the worker ran out of memory during training ({first_line}); {LOWER}") from None


def _train(spec: TrainSpec, hooks: TrainHooks) -> TrainResult:
    # --- setup -------------------------------------------------------------------------------------
    torch.manual_seed(spec.seed)
    random.seed(spec.seed)
    device = pick_device(spec.device)
    # Measured before the model is loaded: the estimate below counts the weights too.
    memory_budget = spec.memory_budget_bytes or device_budget(device)
    if device.type == "cuda":  # report this job's peak, not the worker process's
        torch.cuda.reset_peak_memory_stats(device)
    model, tokenizer, family = load_base(spec.model, device=device)
    adapted: dict[str, dict[str, int]] = {}
    if spec.lora is not None:
        model = attach_lora(model, spec.lora)  # freezes the base; LoRA weights (and SSM params) train
        adapted = adapted_layers(model)
        hooks.on_message(describe(adapted))
    lora_check = LoraGradientCheck(model)
    set_activation_recompute(model, spec.activation_recompute)
    precision = PrecisionPolicy(spec.precision, device)
    precision.prepare(model)
    use_graphs = spec.cuda_graphs and device.type == "cuda"
    if use_graphs and grouped_mm_sync_free(device):
        use_grouped_mm(model)  # the one experts implementation a CUDA graph can capture
    use_graphs = use_graphs and graph_capturable(model) and experts_capturable(model, device)
    params = trainable_parameters(model)
    optimizer = torch.optim.AdamW(params.values(), lr=spec.learning_rate, weight_decay=0.0)
    train_blocks = load_blocks(spec.train_path, tokenizer, spec.max_seq_len)
    valid_blocks = load_blocks(spec.validation_path, tokenizer, spec.max_seq_len) if spec.validation_path else None
    # Refuse a step that cannot fit before spending anything on it; a small file makes smaller batches.
    shape = StepShape(
        min(spec.batch_size, len(train_blocks.inputs)), spec.max_seq_len, spec.precision, spec.activation_recompute
    )
    fused = device.type == "cuda" and fused_kernels_available()
    check_fits(ModelSize.of(model, family=family, fused=fused), shape, memory_budget, device)
    per_epoch = steps_per_epoch(train_blocks, spec.batch_size)
    total_steps = per_epoch * spec.n_epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, spec.warmup_steps, total_steps))
    checkpoints = spec.output_dir / "checkpoints"

    # --- resume, or measure the base model -----------------------------------------------------------
    step, start = 0, DataPosition()
    # Carried across resumes in the checkpoint: recent losses, token and time counters, every step's
    # metrics (the job's results file), base loss.
    state: dict[str, Any] = {"losses": [], "trained_tokens": 0, "train_seconds": 0.0, "history": []}
    state |= {"steady_tokens": 0, "steady_seconds": 0.0}
    if spec.resume_from is not None:
        step, start, state = load_checkpoint(
            spec.resume_from, model=model, optimizer=optimizer, scheduler=scheduler, precision=precision
        )
        state.setdefault("history", [])  # a checkpoint written before steps' metrics were kept
        state.setdefault("steady_tokens", 0)
        state.setdefault("steady_seconds", 0.0)
        hooks.on_message(f"resumed at step {step}/{total_steps}")
    elif valid_blocks is not None:
        # With LoRA attached its B is zero, so this is the base model's loss, at the job's precision.
        state["base_validation_loss"] = evaluate(model, valid_blocks, spec.batch_size, precision)
        hooks.on_message(f"base validation loss {state['base_validation_loss']:.4f}")

    last_checkpoint: Path | None = None

    def checkpoint(position: DataPosition) -> Path | None:
        """Write, upload and return a checkpoint; with non-finite weights, keep the last one instead."""
        if not all_finite(params):
            hooks.on_message(f"No checkpoint at step {step}: the weights are not finite")
            return last_checkpoint
        folder = save_checkpoint(
            checkpoints / f"step-{step:06d}",
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            precision=precision,
            step=step,
            position=position,
            metrics=state,
        )
        hooks.on_checkpoint(folder, step)  # the hook copies or uploads it before returning
        _prune_checkpoints(folder)
        return folder

    # --- train ---------------------------------------------------------------------------------------
    model.train()
    forward_backward = ForwardBackward(
        lambda inputs, targets, documents: next_token_loss(model, inputs, targets, documents),
        precision,
        list(params.values()),
        use_graphs=use_graphs,
        on_message=hooks.on_message,
    )
    divergence = DivergenceCheck(loss_scaling=precision.scaler.is_enabled())
    # attempt_step counts this process's steps: each attempt compiles and captures anew.
    for attempt_step, (position, batch, n_tokens) in enumerate(
        batches(train_blocks, spec.batch_size, spec.n_epochs, spec.seed, start=start), start=1
    ):
        if hooks.should_stop():
            if last_checkpoint is None or last_checkpoint.name != f"step-{step:06d}":
                last_checkpoint = checkpoint(position)
            raise TrainingStopped(step, last_checkpoint)
        t0 = time.perf_counter()
        loss = forward_backward.step(*batch.to(device))  # inputs, targets, documents: (B, T) each
        applied = step - precision.skipped_steps  # optimizer steps applied before this one
        if lora_check.due(applied_steps=applied, last=step + 1 == total_steps):
            lora_check.check(settled=applied > 0)
        lr = optimizer.param_groups[0]["lr"]
        precision.step(optimizer)  # clips; under fp16 may skip (counted in precision.skipped_steps)
        forward_backward.zero_grad(optimizer)
        scheduler.step()
        step += 1
        # One read of both: the loss is needed for progress anyway, so the divergence check costs no sync.
        loss_value, grad_norm = torch.stack([loss.float(), precision.grad_norm.float()]).tolist()
        state["losses"] = (state["losses"] + [loss_value])[-LOSS_WINDOW:]
        seconds = time.perf_counter() - t0  # excludes checkpoints and hooks
        state["trained_tokens"] += n_tokens
        state["train_seconds"] += seconds
        if attempt_step > WARMUP_STEPS:
            state["steady_tokens"] += n_tokens
            state["steady_seconds"] += seconds

        rate = throughput(state)
        steps_per_second = rate * step / state["trained_tokens"]  # at the steady pace, tokens per step averaged
        progress = Progress(
            step=step,
            total_steps=total_steps,
            epoch=position.epoch,
            loss=state["losses"][-1],
            learning_rate=lr,
            tokens_per_second=rate,
            eta_seconds=(total_steps - step) / steps_per_second,
            trained_tokens=state["trained_tokens"],
            skipped_steps=precision.skipped_steps,
            peak_memory_bytes=peak_memory(device),
            steps_per_second=steps_per_second,
            step_seconds=seconds,
        )
        state["history"].append(progress.row())
        hooks.on_progress(progress)
        divergence.observe(step, loss_value, grad_norm)
        if spec.checkpoint_every > 0 and step % spec.checkpoint_every == 0 and step < total_steps:
            last_checkpoint = checkpoint(next_position(position, per_epoch))

    # --- validate and save ---------------------------------------------------------------------------
    metrics: dict[str, Any] = {
        "train_loss": sum(state["losses"]) / max(1, len(state["losses"])),
        "steps": step,
        "trained_tokens": state["trained_tokens"],
        "tokens_per_second": throughput(state) if step else 0.0,
        "skipped_steps": precision.skipped_steps,
        "peak_memory_bytes": peak_memory(device),
        "precision": spec.precision,
        "family": family,
        "trainable_parameters": sum(p.numel() for p in params.values()),
    }
    if adapted:
        metrics["adapted_layers"] = adapted
    if valid_blocks is not None:
        metrics["validation_loss"] = evaluate(model, valid_blocks, spec.batch_size, precision)
        metrics["validation_perplexity"] = math.exp(metrics["validation_loss"])
        if "base_validation_loss" in state:
            metrics["base_validation_loss"] = state["base_validation_loss"]
            metrics["base_validation_perplexity"] = math.exp(state["base_validation_loss"])
    merged_dir = None
    if spec.lora is not None:
        out = spec.output_dir / "adapter"
        save_adapter(model, out)
        if spec.lora.export_merged:
            merged_dir = spec.output_dir / "merged"
            merge_adapter(model).save_pretrained(merged_dir, safe_serialization=True)
            tokenizer.save_pretrained(merged_dir)
    else:
        out = spec.output_dir / "model"
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    (spec.output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return TrainResult(
        adapter_dir=out,
        trained_tokens=state["trained_tokens"],
        steps=step,
        metrics=metrics,
        merged_dir=merged_dir,
        history=state["history"],
    )
