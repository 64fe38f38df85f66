"""Forward and backward of a training step, replayed as one CUDA graph once the shapes settle.

A Mamba step launches thousands of small kernels; at 130M parameters the GPU idles for half the
step while Python launches them. Capturing forward + backward once and replaying it removes that
cost (bench/RESULTS.md). The optimizer step stays eager: it is a handful of fused launches, and
keeping it out of the graph lets the learning-rate schedule, gradient clipping and the fp16 loss
scaler work unchanged (the scaler's scale is a GPU tensor the graph reads at every replay).

A capture that fails (an op that syncs with the host, an allocation the capture refuses) costs the
job nothing but speed: the step is redone eagerly and the run's remaining steps stay eager.
"""

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor

from worker.engine.precision import PrecisionPolicy

LossFn = Callable[..., Tensor]  # (the batch's tensors) -> loss
# Eager steps before capture, on a side stream as CUDA graphs require (allocator and cuBLAS warm-up).
WARMUP_STEPS = 2


@contextlib.contextmanager
def side_stream() -> Iterator[None]:
    """Run the block on a fresh stream ordered after the current one's work, and the current one after it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        yield
    torch.cuda.current_stream().wait_stream(side)


def capture(fn: Callable[[], Tensor]) -> tuple[torch.cuda.CUDAGraph, Tensor]:
    """`fn()` captured into a new CUDA graph, and its result (the graph's static output).

    As `torch.cuda.graph` does, on a side stream into a private memory pool; unlike it, a failed capture
    leaves the current stream and the allocator as they were before raising (`torch.cuda.graph` skips
    restoring the stream when ending the capture fails)."""
    graph, pool = torch.cuda.CUDAGraph(), torch.cuda.graph_pool_handle()
    torch.cuda.synchronize()
    with torch.cuda.stream(torch.cuda.Stream()):
        graph.capture_begin(pool=pool)
        try:
            result = fn()
        except BaseException:
            with contextlib.suppress(RuntimeError):  # the capture's own error is the one to report
                _end_capture(graph, pool)
            raise
        _end_capture(graph, pool)
    return graph, result


def _end_capture(graph: torch.cuda.CUDAGraph, pool: tuple[int, int]) -> None:
    try:
        graph.capture_end()
    except RuntimeError:
        # An invalidated capture fails in cudaStreamEndCapture, before capture_end stops routing the
        # capture's allocations to its pool, and the graph's reset then never releases the pool
        # (aten/src/ATen/cuda/CUDAGraph.cpp): do both here, so the pool's memory returns once freed.
        device = torch.cuda.current_device()
        torch._C._cuda_endAllocateToPool(device, pool)
        torch._C._cuda_releasePool(device, pool)
        raise


class ForwardBackward:
    """`step(*batch)` computes the loss of a batch's tensors (inputs, targets, ...) and fills the `.grad`
    of `parameters` (the trainable ones); `zero_grad` readies the next step. `on_message` hears why the
    steps run eagerly when a capture failed."""

    def __init__(
        self,
        loss_fn: LossFn,
        precision: PrecisionPolicy,
        parameters: Sequence[Tensor],
        *,
        use_graphs: bool,
        on_message: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.loss_fn = loss_fn
        self.precision = precision
        self.parameters = parameters
        self.use_graphs = use_graphs
        self.on_message = on_message
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[tuple[Tensor, ...], Tensor] | None = None  # the batch's tensors, the loss

    def _eager(self, *batch: Tensor) -> Tensor:
        with self.precision.autocast(cache_enabled=not self.use_graphs):
            loss = self.loss_fn(*batch)
        self.precision.scale(loss).backward()
        return loss.detach()

    def step(self, *batch: Tensor) -> Tensor:
        self.calls += 1
        if not self.use_graphs:
            return self._eager(*batch)
        if self.graph is None and self.calls <= WARMUP_STEPS:
            with side_stream():
                return self._eager(*batch)
        if self.graph is None:
            failure = self._capture(batch)
            if failure is not None:
                self._fall_back(failure)
                return self._eager(*batch)
        static_batch, static_loss = self.static
        if batch[0].shape != static_batch[0].shape:
            # A short last batch: run it eagerly into the graph's gradient buffers.
            return self._eager(*batch)
        for static, tensor in zip(static_batch, batch, strict=True):
            static.copy_(tensor)
        self.graph.replay()
        return static_loss

    def _capture(self, batch: tuple[Tensor, ...]) -> str | None:
        """Capture the step into `self.graph`; None, or why the capture failed."""
        static_batch = tuple(t.clone() for t in batch)
        # Gradients are None here (zero_grad set them so), so the captured backward writes fresh
        # buffers instead of accumulating: every replay overwrites them with this step's gradients.
        try:
            self.graph, static_loss = capture(lambda: self._eager(*static_batch))
        except Exception as error:  # whatever stopped the capture, the step itself can run eagerly
            # Only the reason leaves this block: the error's traceback would keep the failed graph alive.
            reason = str(error).strip()
            return reason.splitlines()[0][:300] if reason else type(error).__name__
        self.static = (static_batch, static_loss)
        return None

    def _fall_back(self, reason: str) -> None:
        """Eager from this step on, the failed capture's gradients dropped and the allocator's cache emptied (on
        an H200 0.94 GB of a failed capture still stayed reserved: tests/gpu/test_cuda_graph_gpu.py)."""
        self.use_graphs = False
        # The capture's backward may have written gradients (into the graph's pool, or not at all): the
        # step redone eagerly must start from none, as the capture did.
        for param in self.parameters:
            param.grad = None
        torch.cuda.empty_cache()  # the failed capture's pool, its tensors now freed
        self.on_message(f"CUDA graph capture failed ({reason}): this step and the rest of this run train eagerly")

    def zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        if self.graph is None:
            optimizer.zero_grad(set_to_none=True)
        else:
            # The graph owns the gradient buffers: keep them. Zeroing matters only for an eager
            # fallback step, which accumulates into them.
            optimizer.zero_grad(set_to_none=False)
