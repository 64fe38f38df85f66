"""ForwardBackward when capturing its CUDA graph fails, on the CPU with the CUDA parts stood in for: the job
keeps training, eagerly, on exactly the losses and gradients of eager steps, and says why."""

import contextlib
import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.engine import cuda_graph
from worker.engine.cuda_graph import WARMUP_STEPS, ForwardBackward
from worker.engine.precision import PrecisionPolicy

CAPTURE_ERROR = "CUDA error: operation not permitted when stream is capturing"


def batches(n: int) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 8, generator=generator), torch.randn(4, generator=generator)) for _ in range(n)]


def trained(model: nn.Module, use_graphs: bool, on_message: Callable[[str], None]) -> list[tuple[Tensor, list]]:
    """Each step's loss and gradients over the same batches, an SGD step after each."""
    policy = PrecisionPolicy("fp32", torch.device("cpu"))
    params = list(model.parameters())
    optimizer = torch.optim.SGD(params, lr=0.1)
    step = ForwardBackward(
        lambda x, y: F.mse_loss(model(x).squeeze(-1), y), policy, params, use_graphs=use_graphs, on_message=on_message
    )
    seen = []
    for batch in batches(WARMUP_STEPS + 3):
        loss = step.step(*batch)
        seen.append((loss.clone(), [p.grad.clone() for p in params]))
        optimizer.step()
        step.zero_grad(optimizer)
    return seen


def test_a_failed_capture_redoes_its_step_eagerly_and_the_run_stays_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[int] = []

    def failing_capture(fn: Callable[[], Tensor]) -> None:
        # As a capture that fails in backward: gradients already written, then the error.
        attempts.append(1)
        fn()
        raise RuntimeError(f"{CAPTURE_ERROR}\nCUDA kernel errors might be asynchronously reported")

    monkeypatch.setattr(cuda_graph, "side_stream", contextlib.nullcontext)
    monkeypatch.setattr(cuda_graph, "capture", failing_capture)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1))
    messages: list[str] = []

    graphed = trained(copy.deepcopy(model), use_graphs=True, on_message=messages.append)
    eager = trained(model, use_graphs=False, on_message=messages.append)

    assert attempts == [1]  # captured once, at the first step past the warm-up; never again
    assert len(graphed) == len(eager)
    for (loss, grads), (eager_loss, eager_grads) in zip(graphed, eager, strict=True):
        assert torch.equal(loss, eager_loss)
        assert all(torch.equal(g, e) for g, e in zip(grads, eager_grads, strict=True))
    assert messages == [
        f"CUDA graph capture failed ({CAPTURE_ERROR}): this step and the rest of this run train eagerly"
    ]
