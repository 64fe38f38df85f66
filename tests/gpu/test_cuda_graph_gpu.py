"""On CUDA: a training step replayed as a CUDA graph computes what the eager step computes
(bench/trainer_gpu.py's `check`, on the tiny models): the same per-step losses, up to the run-to-run
noise two eager runs show (the selective scan's backward adds with atomics). Mixtures of experts are
captured too where their grouped GEMM has no host sync (bf16 on compute capability 9.x/10.x), and a capture
that fails leaves the job training eagerly."""

from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("mamba_ssm")

import torch.nn.functional as F  # noqa: E402

from bench.gpu_parity import TARGETS  # noqa: E402
from bench.trainer_gpu import base_spec, gap, step_losses  # noqa: E402
from worker.engine import cuda_graph  # noqa: E402
from worker.engine.cuda_graph import WARMUP_STEPS, ForwardBackward  # noqa: E402
from worker.engine.experts import SYNC_FREE_MAJORS, experts_capturable  # noqa: E402
from worker.engine.loading import load_base  # noqa: E402
from worker.engine.lora_fold import attach_lora  # noqa: E402
from worker.engine.precision import PrecisionPolicy  # noqa: E402
from worker.engine.spec import LoraSpec, Progress, TrainHooks  # noqa: E402
from worker.engine.tiny_model import create_tiny_model  # noqa: E402
from worker.engine.trainer import train  # noqa: E402

pytestmark = pytest.mark.gpu
# Below the noise floor of two eager runs, a loss differs in its third decimal at most.
NOISE_FLOOR = 0.01
MOE = ("granitemoehybrid", "jamba")
SYNC_FREE_GROUPED_MM = torch.cuda.get_device_capability()[0] in SYNC_FREE_MAJORS


def tiny_model(family: str, request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if family in ("mamba", "mamba2"):
        return request.getfixturevalue(f"tiny_{family}")
    return create_tiny_model(tmp_path / family, family)


@pytest.mark.parametrize("family", ["mamba", "mamba2", *MOE])
def test_graph_replay_gives_the_eager_losses(
    family: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if family in MOE and not SYNC_FREE_GROUPED_MM:
        pytest.skip("experts are captured on compute capability 9.x/10.x only")
    folder = tiny_model(family, request, tmp_path)
    spec = base_spec(folder, tmp_path / "graphed", batch=8, seq=256, epochs=1, targets=TARGETS[family])
    captures: list[str | None] = []
    capture = ForwardBackward._capture

    def counted_capture(self: ForwardBackward, *args: object) -> str | None:
        captures.append(capture(self, *args))
        return captures[-1]

    monkeypatch.setattr(ForwardBackward, "_capture", counted_capture)
    graphed = step_losses(spec)
    assert captures == [None]  # one capture, which worked: the comparison below is not eager vs eager

    eager = step_losses(replace(spec, cuda_graphs=False, output_dir=tmp_path / "eager"))
    again = step_losses(replace(spec, cuda_graphs=False, output_dir=tmp_path / "again"))
    assert len(graphed) == len(eager) > 3, (graphed, eager)
    assert graphed[0] == eager[0]  # the first step runs eagerly in both
    assert gap(graphed, eager) <= 2 * gap(again, eager) + NOISE_FLOOR, (graphed, eager, again)


@pytest.mark.parametrize("family", MOE)
def test_bf16_adapters_on_experts_are_capturable_where_grouped_mm_has_no_host_sync(family: str, tmp_path: Path) -> None:
    device = torch.device("cuda")
    model, _, _ = load_base(str(create_tiny_model(tmp_path / family, family)), device=device)
    model = attach_lora(model, LoraSpec.for_family(family))
    PrecisionPolicy("bf16", device).prepare(model)
    assert experts_capturable(model, device) is SYNC_FREE_GROUPED_MM


def steps_through_a_failed_capture(use_graphs: bool) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], list[str]]:
    """Each step's loss and gradient, and the messages, of a run whose capture breaks on a host sync (`.item()`
    while capturing), or of the same run eager."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    param = torch.randn(256, 256, device=device).requires_grad_(True)
    optimizer = torch.optim.SGD([param], lr=0.1)

    def loss_fn(x: torch.Tensor) -> torch.Tensor:
        scratch = torch.ones(64 << 20, device=device)  # 256 MiB: a leaked pool would keep it reserved
        loss = F.mse_loss(x @ param, x) * scratch[0]
        if torch.cuda.is_current_stream_capturing():
            loss.item()  # a host sync: the capture fails
        return loss

    messages: list[str] = []
    step = ForwardBackward(
        loss_fn, PrecisionPolicy("fp32", device), [param], use_graphs=use_graphs, on_message=messages.append
    )
    generator = torch.Generator(device).manual_seed(0)
    seen = []
    for _ in range(WARMUP_STEPS + 3):
        loss = step.step(torch.randn(32, 256, device=device, generator=generator))
        seen.append((loss.clone(), param.grad.clone()))
        optimizer.step()
        step.zero_grad(optimizer)
    return seen, messages


def test_a_capture_a_host_sync_breaks_trains_eagerly_with_the_eager_steps_numbers() -> None:
    graphed, messages = steps_through_a_failed_capture(use_graphs=True)
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    eager, _ = steps_through_a_failed_capture(use_graphs=False)

    assert len(messages) == 1 and messages[0].startswith("CUDA graph capture failed ("), messages
    for (loss, grad), (eager_loss, eager_grad) in zip(graphed, eager, strict=True):
        # Up to cuBLAS's choices on another stream; a leaked gradient would double it.
        assert torch.allclose(loss, eager_loss, rtol=1e-5) and torch.allclose(grad, eager_grad, rtol=1e-5, atol=1e-8)


@pytest.mark.xfail(
    strict=True,
    reason="measured on an H200 (2026-12-02): 0.94 GB stays reserved after the failed capture and empty_cache, "
    "though cuda_graph.capture ends the allocation to its pool and releases the pool",
)
def test_a_failed_capture_hands_its_memory_back() -> None:
    torch.cuda.empty_cache()
    before = torch.cuda.memory_reserved()  # what earlier tests in this process left behind
    steps_through_a_failed_capture(use_graphs=True)
    torch.cuda.empty_cache()
    assert torch.cuda.memory_reserved() - before < 128 << 20, (before, torch.cuda.memory_reserved())


def test_a_job_whose_capture_fails_says_so_and_trains_eagerly(
    tiny_mamba: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused(fn: object) -> None:
        raise RuntimeError("capture refused")

    monkeypatch.setattr(cuda_graph, "capture", refused)
    spec = base_spec(tiny_mamba, tmp_path / "failed", batch=8, seq=256, epochs=1, targets=TARGETS["mamba"])
    losses: list[float] = []
    messages: list[str] = []

    def record(progress: Progress) -> None:
        losses.append(progress.loss)

    train(spec, TrainHooks(on_progress=record, on_message=messages.append))
    eager = step_losses(replace(spec, cuda_graphs=False, output_dir=tmp_path / "eager"))
    again = step_losses(replace(spec, cuda_graphs=False, output_dir=tmp_path / "again"))

    assert "CUDA graph capture failed (capture refused): this step and the rest of this run train eagerly" in messages
    assert len(losses) == len(eager) > WARMUP_STEPS + 1
    assert gap(losses, eager) <= 2 * gap(again, eager) + NOISE_FLOOR, (losses, eager, again)
