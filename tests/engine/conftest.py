"""Shared engine fixtures: the shipped tiny models and small slices of the demo data."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

DEMO = Path(__file__).resolve().parents[2] / "demo"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """The test box is shared; one thread also keeps CPU numerics identical between runs compared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    return DEMO


def _head(tmp_path_factory: pytest.TempPathFactory, name: str, n: int) -> Path:
    lines = (DEMO / name).read_text().splitlines()[:n]
    path = tmp_path_factory.mktemp("data") / name
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def demo_train(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 240 demo examples: 12 steps of 8 x 64 tokens per epoch keep a run near 10 s on CPU."""
    return _head(tmp_path_factory, "train.jsonl", 240)


@pytest.fixture(scope="session")
def demo_valid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _head(tmp_path_factory, "valid.jsonl", 40)
