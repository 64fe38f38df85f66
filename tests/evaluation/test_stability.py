"""The stability report: λ < 0 for real models, an unstable A is caught, the divergence fit, the plot."""

import json
from pathlib import Path

import pytest
import torch

from worker.engine.families import ssm_mixers
from worker.engine.lora_fold import attach_lora
from worker.engine.spec import LoraSpec
from worker.engine.tiny_model import create_tiny_model
from worker.evaluation.model import load_for_eval
from worker.evaluation.stability import lyapunov
from worker.evaluation.stability.divergence import GROWTH_THRESHOLD, growth_rate
from worker.evaluation.stability.lyapunov import lyapunov_exponents
from worker.evaluation.stability.plot import plot_divergence
from worker.evaluation.stability.report import job_stability, stability_report, token_batch

DEMO = Path(__file__).resolve().parents[2] / "demo"


def _batch(tokenizer) -> torch.Tensor:
    return token_batch(tokenizer, DEMO / "text_valid.jsonl", seq_len=64, n_sequences=2)


@pytest.mark.parametrize("family", ["mamba", "mamba2", "falcon_h1", "granitemoehybrid", "zamba2"])
def test_random_init_models_are_stable(family: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    shipped = {"mamba": "tiny_mamba", "mamba2": "tiny_mamba2"}
    folder = request.getfixturevalue(shipped[family]) if family in shipped else create_tiny_model(tmp_path, family)
    model, tokenizer, found = load_for_eval(str(folder))
    report = stability_report(model, found, _batch(tokenizer), "bf16")
    # One row per SSM mixer: every block of the tiny models, but Granite's attention blocks have none.
    assert found == family and len(report.layers) == len(ssm_mixers(model)) >= 2
    assert report.stable and all(layer.lyapunov_exponent < 0 for layer in report.layers)
    assert not report.exponential_growth
    data = json.loads(json.dumps(report.to_dict()))
    assert data["max_lyapunov_exponent"] < 0 and data["growth_threshold"] == GROWTH_THRESHOLD
    assert len(data["divergence"][0]["per_position"]) == 64
    # bf16 really differs from fp32, but only by rounding.
    assert all(0 < max(d["per_position"]) < 0.1 for d in data["divergence"])


def test_a_bamba_models_report_gives_lambda_for_its_mamba_layers(tmp_path: Path) -> None:
    model, tokenizer, _ = load_for_eval(str(create_tiny_model(tmp_path, "bamba")))
    report = stability_report(model, "bamba", _batch(tokenizer), "bf16")
    assert model.config.attn_layer_indices == [1]  # of 4 layers: the other three are Mamba-2 layers
    assert len(report.layers) == 3 and report.stable and not report.exponential_growth


def test_planted_nonnegative_A_is_reported_unstable(tiny_mamba: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, tokenizer, _ = load_for_eval(str(tiny_mamba))
    monkeypatch.setattr(lyapunov, "ssm_A", lambda mixer: torch.exp(mixer.A_log.float()))  # A = +exp(A_log) > 0
    layers = lyapunov_exponents(model, _batch(tokenizer))
    assert all(not layer.stable and layer.lyapunov_exponent > 0 for layer in layers)


def test_lyapunov_exponent_reads_lora_through_effective_weight(tiny_mamba: Path) -> None:
    model, tokenizer, _ = load_for_eval(str(tiny_mamba))
    tokens = _batch(tokenizer)
    before = lyapunov_exponents(model, tokens)
    model = attach_lora(model, LoraSpec(target_modules=("dt_proj",)))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:  # B starts at zero; a large B makes Δ and so λ move
                param.fill_(0.5)
    after = lyapunov_exponents(model, tokens)
    assert [a.lyapunov_exponent for a in after] != pytest.approx([b.lyapunov_exponent for b in before], rel=1e-3)
    assert all(layer.stable for layer in after)


def test_growth_rate_separates_exponential_from_polynomial_growth() -> None:
    t = torch.arange(128, dtype=torch.float64)
    assert growth_rate(1e-3 * torch.exp(0.1 * t)) == pytest.approx(0.1)
    assert growth_rate(1e-3 * (1 + t)) < GROWTH_THRESHOLD  # linear growth: slope about 3 / 128
    assert growth_rate(torch.full((128,), 1e-3)) == pytest.approx(0.0)


def test_finetuned_model_stays_stable_and_plot_is_a_png(
    tiny_mamba: Path, lookup_adapter: Path, tasks_dir: Path, tmp_path: Path
) -> None:
    reports = job_stability(str(tiny_mamba), lookup_adapter, tasks_dir / "lookup_train.jsonl", precision="fp32")
    assert set(reports) == {"base", "fine_tuned"}
    assert all(r.precision == "bf16" and r.stable and r.max_lyapunov_exponent < 0 for r in reports.values())
    # The adapter trained dt_proj and x_proj, so the fine-tuned Δ (hence λ) differs from the base.
    assert reports["fine_tuned"].max_lyapunov_exponent != reports["base"].max_lyapunov_exponent
    png = plot_divergence(reports, tmp_path / "stability.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
