"""Forward and backward of a training step, replayed as one CUDA graph once the shapes settle.

A Mamba step launches thousands of small kernels; at 130M parameters the GPU idles for half the
step while Python launches them. Capturing forward + backward once and replaying it removes that
cost (bench/RESULTS.md). The optimizer step stays eager: it is a handful of fused launches, and
keeping it out of the graph lets the learning-rate schedule, gradient clipping and the fp16 loss
scaler work unchanged (the scaler's scale is a GPU tensor the graph reads at every replay).
"""

from collections.abc import Callable

import torch
from torch import Tensor

from worker.engine.precision import PrecisionPolicy

LossFn = Callable[..., Tensor]  # (the batch's tensors) -> loss
# Eager steps before capture, on a side stream as CUDA graphs require (allocator and cuBLAS warm-up).
WARMUP_STEPS = 2


class ForwardBackward:
    """`step(*batch)` computes the loss of a batch's tensors (inputs, targets, ...) and fills `.grad`;
    `zero_grad` readies the next step."""

    def __init__(self, loss_fn: LossFn, precision: PrecisionPolicy, *, use_graphs: bool) -> None:
        self.loss_fn = loss_fn
        self.precision = precision
        self.use_graphs = use_graphs
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
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss = self._eager(*batch)
            torch.cuda.current_stream().wait_stream(side)
            return loss
        if self.graph is None:
            self._capture(batch)
        static_batch, static_loss = self.static
        if batch[0].shape != static_batch[0].shape:
            # A short last batch: run it eagerly into the graph's gradient buffers.
            return self._eager(*batch)
        for static, tensor in zip(static_batch, batch, strict=True):
            static.copy_(tensor)
        self.graph.replay()
        return static_loss

    def _capture(self, batch: tuple[Tensor, ...]) -> None:
        static_batch = tuple(t.clone() for t in batch)
        self.graph = torch.cuda.CUDAGraph()
        # Gradients are None here (zero_grad set them so), so the captured backward writes fresh
        # buffers instead of accumulating: every replay overwrites them with this step's gradients.
        with torch.cuda.graph(self.graph):
            static_loss = self._eager(*static_batch)
        self.static = (static_batch, static_loss)

    def zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        if self.graph is None:
            optimizer.zero_grad(set_to_none=True)
        else:
            # The graph owns the gradient buffers: keep them. Zeroing matters only for an eager
            # fallback step, which accumulates into them.
            optimizer.zero_grad(set_to_none=False)
