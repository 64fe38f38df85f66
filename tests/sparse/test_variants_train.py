"""Every Sparse Mamba variant trains on stdlib code; ST-Mamba2 holds A at its floor on every path."""

import math
from pathlib import Path

import pytest
import torch

from worker.engine.model_builder import Architecture, create_model_folder
from worker.engine.sparse_mamba import STABLE_FLOOR, clamped_heads
from worker.engine.spec import TrainSpec
from worker.engine.trainer import train

from .factories import corpus_sample, tiny_mamba2

VARIANTS = [("mamba", "controllable"), ("mamba", "observable"), ("mamba2", "stable")]


@pytest.mark.parametrize(("family", "variant"), VARIANTS)
def test_a_tiny_model_of_each_variant_trains_on_stdlib_code(family: str, variant: str, tmp_path: Path) -> None:
    train_path, validation_path = corpus_sample(tmp_path, chars=600)  # ~37 steps of 8 x 64 tokens
    field = "ssm_structure" if family == "mamba" else "a_constraint"
    arch = Architecture(id="m", family=family, d_model=32, n_layer=2, d_state=8, **{field: variant})
    create_model_folder(arch, tmp_path / "model")

    result = train(
        TrainSpec(
            model=str(tmp_path / "model"),
            train_path=train_path,
            validation_path=validation_path,
            output_dir=tmp_path / "out",
            lora=None,
            learning_rate=3e-3,
            batch_size=8,
            max_seq_len=64,
            device="cpu",
            checkpoint_every=0,
        )
    )

    assert result.steps >= 20
    assert result.metrics["validation_loss"] < result.metrics["base_validation_loss"] - 0.5
    assert math.isfinite(result.metrics["validation_loss"])


def test_stable_mamba2_reads_A_at_its_floor_and_counts_the_clamped_head() -> None:
    stable, stock = tiny_mamba2("stable"), tiny_mamba2("none")
    with torch.no_grad():
        for model, value in ((stable, -40.0), (stock, math.log(STABLE_FLOOR))):
            model.backbone.layers[0].mixer.A_log[0] = value  # stable: exp(-40) would be a near-integrator
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(0))

    assert torch.allclose(stable(ids).logits, stock(ids).logits, atol=1e-5)
    assert clamped_heads(stable.backbone.layers[0].mixer) == 1
    assert stable.backbone.layers[0].mixer.A_log[0] == -40.0  # the parameter itself is untouched
