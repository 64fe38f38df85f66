"""On CUDA with the fused kernels, a job's stability report is made in every precision, for Mamba and Mamba-2.

The fused layer loop bypasses the blocks' forward, so a report that hooked them captured nothing there and
every job's report failed on the GPU (`max() iterable argument is empty`) while the CPU tests passed.
"""

from pathlib import Path

import pytest

from worker.engine.spec import LoraSpec, TrainHooks, TrainSpec
from worker.engine.trainer import train
from worker.evaluation.stability.report import job_stability

pytestmark = pytest.mark.gpu
DEMO = Path(__file__).resolve().parents[2] / "demo"


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("family", ["mamba", "mamba2"])
def test_a_cuda_jobs_stability_report_has_every_layer(
    family: str, precision: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    model = request.getfixturevalue("tiny_mamba" if family == "mamba" else "tiny_mamba2")
    targets = ("in_proj", "x_proj", "dt_proj", "out_proj") if family == "mamba" else ("in_proj", "out_proj")
    train_path = tmp_path / "train.jsonl"  # 20 steps: the report, not the training, is under test
    train_path.write_text("".join((DEMO / "train.jsonl").read_text().splitlines(keepends=True)[:160]))
    spec = TrainSpec(
        model=str(model),
        train_path=train_path,
        validation_path=DEMO / "valid.jsonl",
        output_dir=tmp_path / "out",
        precision=precision,
        lora=LoraSpec(target_modules=targets),
        batch_size=8,
        max_seq_len=128,
        device="cuda",
    )
    result = train(spec, TrainHooks())
    reports = job_stability(str(model), result.adapter_dir, DEMO / "valid.jsonl", precision=precision, device="cuda")
    for report in reports.values():
        assert report.precision == ("bf16" if precision == "fp32" else precision)
        assert len(report.layers) == len(report.divergence) == 4
        data = report.to_dict()
        assert data["stable"] and data["max_lyapunov_exponent"] < 0
        # The low precision really differs from fp32 on the GPU, by rounding only.
        assert all(0 < max(d["per_position"]) < 0.2 for d in data["divergence"]), data["divergence"]
