"""The stability report on Sparse Mamba models: λ from the companion roots, and the structure checks."""

import math

import pytest
import torch

from worker.engine.families import ssm_mixers
from worker.engine.sparse_mamba import STABLE_FLOOR, mixer_A
from worker.evaluation.stability.lyapunov import ssm_A
from worker.evaluation.stability.report import stability_report

from .factories import D_STATE, tiny, tiny_mamba2

IDS = torch.randint(0, 256, (1, 24), generator=torch.Generator().manual_seed(0))


def test_report_of_an_observable_model_is_stable_with_full_rank_layers() -> None:
    # SC gets the same report end to end, through the job runner (test_created_model_job.py).
    structure = "observable"
    model = tiny(structure).eval()

    report = stability_report(model, "mamba", IDS, "bf16").to_dict()

    assert report["stable"] and report["max_lyapunov_exponent"] < 0
    layers = [(s["layer"], s["variant"], s["rank"]) for s in report["structure"]]
    assert layers == [(0, structure, D_STATE), (1, structure, D_STATE)]
    for layer in report["structure"]:
        assert layer["max_real_eigenvalue"] < 0
        assert 1 <= layer["condition_number"] < math.inf


def test_companion_decay_rates_are_the_real_parts_of_the_dense_matrix_eigenvalues() -> None:
    mixer = ssm_mixers(tiny("observable"))[0]
    with torch.no_grad():  # move the roots off their initial spread, so the check is not about the init
        mixer.A_root_log_decay.add_(torch.randn_like(mixer.A_root_log_decay))

    rates = ssm_A(mixer).double().sort(dim=-1).values  # (d_inner, n)
    dense = torch.linalg.eigvals(mixer_A(mixer)).real.sort(dim=-1).values

    assert rates.shape == dense.shape == (mixer.intermediate_size, D_STATE)
    assert torch.allclose(rates, dense, rtol=1e-4, atol=1e-6)


def test_stable_mamba2_reports_the_clamped_heads_and_the_floor() -> None:
    model = tiny_mamba2("stable").eval()
    with torch.no_grad():
        model.backbone.layers[0].mixer.A_log[:2] = -40.0  # two heads would be near-integrators without the floor

    report = stability_report(model, "mamba2", IDS, "bf16")

    first, second = report.structure
    assert (first.variant, first.clamped_heads, second.clamped_heads) == ("stable", 2, 0)
    assert first.max_real_eigenvalue == pytest.approx(-STABLE_FLOOR)
    assert report.layers[0].lyapunov_exponent < 0
    assert report.max_lyapunov_exponent == max(layer.lyapunov_exponent for layer in report.layers)
