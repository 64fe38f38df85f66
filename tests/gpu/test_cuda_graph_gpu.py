"""On CUDA: a training step replayed as a CUDA graph computes what the eager step computes
(bench/trainer_gpu.py's `check`, on the tiny models): the same per-step losses, up to the run-to-run
noise two eager runs show (the selective scan's backward adds with atomics)."""

from dataclasses import replace
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("needs CUDA", allow_module_level=True)
pytest.importorskip("mamba_ssm")

from bench.gpu_parity import TARGETS  # noqa: E402
from bench.trainer_gpu import base_spec, gap, step_losses  # noqa: E402
from worker.engine.cuda_graph import ForwardBackward  # noqa: E402

pytestmark = pytest.mark.gpu
# Below the noise floor of two eager runs, a loss differs in its third decimal at most.
NOISE_FLOOR = 0.01


@pytest.mark.parametrize("family", ["mamba", "mamba2"])
def test_graph_replay_gives_the_eager_losses(
    family: str, tiny_mamba: Path, tiny_mamba2: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tiny_mamba if family == "mamba" else tiny_mamba2
    spec = base_spec(folder, tmp_path / "graphed", batch=8, seq=256, epochs=1, targets=TARGETS[family])
    captures: list[int] = []
    capture = ForwardBackward._capture

    def counted_capture(self: ForwardBackward, *args: object) -> None:
        captures.append(1)
        capture(self, *args)

    monkeypatch.setattr(ForwardBackward, "_capture", counted_capture)
    graphed = step_losses(spec)
    assert captures == [1]  # the run replayed a graph, so the comparison below is not eager vs eager

    eager = step_losses(replace(spec, cuda_graphs=False, output_dir=tmp_path / "eager"))
    again = step_losses(replace(spec, cuda_graphs=False, output_dir=tmp_path / "again"))
    assert len(graphed) == len(eager) > 3, (graphed, eager)
    assert graphed[0] == eager[0]  # the first step runs eagerly in both
    assert gap(graphed, eager) <= 2 * gap(again, eager) + NOISE_FLOOR, (graphed, eager, again)
