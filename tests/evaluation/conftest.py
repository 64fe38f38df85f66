"""Evaluation fixtures: the tiny models, one short fine-tuning run on a shipped task, the tasks' train files."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from worker.engine.spec import LoraSpec, TrainSpec
from worker.engine.trainer import train

# The fine-tuning file of each shipped task (the tasks themselves ship in app/evaluations/tasks/).
TASKS = Path(__file__).resolve().parents[2] / "demo" / "tasks"


@pytest.fixture(autouse=True, scope="session")
def two_threads() -> Iterator[None]:
    """The box has two cores: more threads only contend. Restored for other folders' tests."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tasks_dir() -> Path:
    return TASKS


@pytest.fixture(scope="session")
def lookup_adapter(tiny_mamba: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LoRA on the shipped lookup train file: one epoch, 9 steps of 16 x 64 tokens (about 10 s on CPU)."""
    spec = TrainSpec(
        model=str(tiny_mamba),
        train_path=TASKS / "lookup_train.jsonl",
        output_dir=tmp_path_factory.mktemp("ft"),
        lora=LoraSpec(r=8, alpha=16),
        n_epochs=1,
        batch_size=16,
        learning_rate=1e-2,
        max_seq_len=64,
        checkpoint_every=10**6,
    )
    return train(spec).adapter_dir
