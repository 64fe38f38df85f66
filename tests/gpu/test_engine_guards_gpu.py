"""On CUDA: the memory budget is the GPU's free memory and a step beyond it is refused before training; a
diverging run (CUDA graphs on) fails with training_diverged; an adapter the fused kernel path does not read fails
with lora_target_not_training; an ordinary run is admitted and trains."""

import dataclasses
from pathlib import Path

import pytest
import torch

from families.factories import bypassing
from worker.engine.families import ENGINES
from worker.engine.memory import device_budget
from worker.engine.spec import (
    InsufficientMemory,
    LoraSpec,
    LoraTargetNotTraining,
    TrainHooks,
    TrainingDiverged,
    TrainSpec,
)
from worker.engine.trainer import train

pytestmark = pytest.mark.gpu
DEMO = Path(__file__).resolve().parents[2] / "demo"


def _spec(model: Path, tmp_path: Path, **overrides) -> TrainSpec:
    train_path = tmp_path / "train.jsonl"
    train_path.write_text("".join((DEMO / "train.jsonl").read_text().splitlines(keepends=True)[:160]))
    values = {
        "model": str(model),
        "train_path": train_path,
        "output_dir": tmp_path / "out",
        "precision": "bf16",
        "lora": LoraSpec(),
        "batch_size": 8,
        "max_seq_len": 128,
        "device": "cuda",
    }
    return TrainSpec(**(values | overrides))


def test_the_budget_is_the_gpus_free_memory_and_a_step_beyond_it_is_refused_before_training(
    tiny_mamba: Path, tmp_path: Path
) -> None:
    free, total = torch.cuda.mem_get_info()
    assert 0.9 * free <= device_budget(torch.device("cuda")) <= total
    # The tiny model's step fits any GPU, so the budget is made small: the check, not the card, is under test.
    with pytest.raises(InsufficientMemory, match="batch_size"):
        train(_spec(tiny_mamba, tmp_path, max_seq_len=4096, memory_budget_bytes=256 << 20), TrainHooks())
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_a_diverging_full_fine_tune_under_cuda_graphs_fails_with_training_diverged(
    tiny_mamba: Path, tmp_path: Path
) -> None:
    with pytest.raises(TrainingDiverged, match="not finite for 3 steps in a row"):
        train(
            _spec(
                tiny_mamba, tmp_path, lora=None, precision="fp16", learning_rate=1.0, train_path=DEMO / "train.jsonl"
            ),
            TrainHooks(),
        )


def test_an_adapter_the_fused_kernel_path_bypasses_fails_under_cuda_graphs(
    tiny_mamba: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = ENGINES["mamba"]
    monkeypatch.setitem(
        ENGINES, "mamba", dataclasses.replace(engine, mixer_forward=bypassing("x_proj", engine.mixer_forward))
    )
    with pytest.raises(LoraTargetNotTraining, match=r"mixer\.x_proj \(lora_A, lora_B; 4 of 4 modules\): "):
        train(_spec(tiny_mamba, tmp_path), TrainHooks())


def test_an_ordinary_lora_run_is_admitted_and_trains(tiny_mamba2: Path, tmp_path: Path) -> None:
    result = train(_spec(tiny_mamba2, tmp_path), TrainHooks())
    assert result.steps > 0 and result.metrics["skipped_steps"] == 0
