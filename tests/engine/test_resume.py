"""Stopping and resuming: a stopped-and-resumed run ends exactly where an uninterrupted one does."""

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from worker.engine.spec import LoraSpec, Progress, TrainHooks, TrainingStopped, TrainSpec
from worker.engine.trainer import train

# Same ops in the same order on one CPU thread: the runs should agree bit for bit; 1e-5 allows for
# nothing more than float formatting.
LOSS_TOLERANCE = 1e-5


def run(spec: TrainSpec, stop_after: int | None = None) -> tuple[list[Progress], list[tuple[Path, int]]]:
    progress: list[Progress] = []
    checkpoints: list[tuple[Path, int]] = []
    hooks = TrainHooks(
        on_progress=progress.append,
        on_checkpoint=lambda folder, step: checkpoints.append((folder, step)),
        should_stop=lambda: stop_after is not None and len(progress) >= stop_after,
    )
    train(spec, hooks)
    return progress, checkpoints


@pytest.fixture(scope="module")
def spec(tiny_mamba, demo_train, tmp_path_factory) -> TrainSpec:
    # 130 examples pack into 49 blocks: 7 steps of 8 per epoch, the last one short.
    train_path = tmp_path_factory.mktemp("data") / "train.jsonl"
    train_path.write_text("".join(demo_train.read_text().splitlines(keepends=True)[:130]))
    # Dropout on in_proj draws from the torch RNG every step, so a resume must restore that RNG too;
    # two epochs put the stop mid-way through the second, past the reshuffle.
    return TrainSpec(
        model=str(tiny_mamba),
        train_path=train_path,
        output_dir=tmp_path_factory.mktemp("full"),
        lora=LoraSpec(r=4, alpha=8.0, dropout=0.1, target_modules=("in_proj",)),
        n_epochs=2,
        batch_size=8,
        max_seq_len=64,
        learning_rate=3e-3,
        warmup_steps=3,
        checkpoint_every=4,
        device="cpu",
    )


def test_stop_then_resume_matches_an_uninterrupted_run(spec, tmp_path):
    full, full_checkpoints = run(spec)
    assert len(full) == 14 and [s for _, s in full_checkpoints] == [4, 8, 12]

    stopped = replace(spec, output_dir=tmp_path)
    with pytest.raises(TrainingStopped) as stop:
        run(stopped, stop_after=10)
    assert stop.value.step == 10 and stop.value.checkpoint == tmp_path / "checkpoints" / "step-000010"
    # Only the newest checkpoint is kept.
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000010"]

    resumed, _ = run(replace(stopped, resume_from=stop.value.checkpoint))
    assert [p.step for p in resumed] == list(range(11, 15))
    for a, b in zip(full[10:], resumed, strict=True):
        assert abs(a.loss - b.loss) <= LOSS_TOLERANCE and a.learning_rate == b.learning_rate
    assert resumed[-1].trained_tokens == full[-1].trained_tokens
    final_full = load_file(str(spec.output_dir / "adapter" / "adapter_model.safetensors"))
    final_resumed = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert final_full.keys() == final_resumed.keys()
    assert all(torch.equal(final_full[k], final_resumed[k]) for k in final_full)
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (spec.output_dir, tmp_path)]
    assert abs(metrics[0]["train_loss"] - metrics[1]["train_loss"]) <= LOSS_TOLERANCE


def test_checkpoint_holds_only_safetensors_and_json(spec, tmp_path):
    with pytest.raises(TrainingStopped) as stop:
        run(replace(spec, output_dir=tmp_path), stop_after=2)
    folder = stop.value.checkpoint
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(
        [
            "trainable.safetensors",
            "optimizer.safetensors",
            "rng.safetensors",
            "optimizer.json",
            "trainer_state.json",
        ]
    )
    # Every file parses as JSON or safetensors, neither of which can hold a pickle.
    for path in folder.iterdir():
        if path.suffix == ".json":
            json.loads(path.read_text())
        else:
            with safe_open(str(path), framework="pt") as f:
                assert list(f.keys())
    state = json.loads((folder / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["position"] == {"epoch": 0, "batch": 2}
    optimizer = load_file(str(folder / "optimizer.safetensors"))
    assert {k.split(".", 1)[1] for k in optimizer} == {"step", "exp_avg", "exp_avg_sq"}
