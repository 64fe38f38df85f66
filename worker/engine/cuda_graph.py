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

LossFn = Callable[[Tensor, Tensor], Tensor]
# Eager steps before capture, on a side stream as CUDA graphs require (allocator and cuBLAS warm-up).
WARMUP_STEPS = 2


class ForwardBackward:
    """`step(inputs, targets)` computes the loss and fills `.grad`; `zero_grad` readies the next step."""

    def __init__(self, loss_fn: LossFn, precision: PrecisionPolicy, *, use_graphs: bool) -> None:
        self.loss_fn = loss_fn
        self.precision = precision
        self.use_graphs = use_graphs
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[Tensor, Tensor, Tensor] | None = None  # inputs, targets, loss

    def _eager(self, inputs: Tensor, targets: Tensor) -> Tensor:
        with self.precision.autocast(cache_enabled=not self.use_graphs):
            loss = self.loss_fn(inputs, targets)
        self.precision.scale(loss).backward()
        return loss.detach()

    def step(self, inputs: Tensor, targets: Tensor) -> Tensor:
        self.calls += 1
        if not self.use_graphs:
            return self._eager(inputs, targets)
        if self.graph is None and self.calls <= WARMUP_STEPS:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                loss = self._eager(inputs, targets)
            torch.cuda.current_stream().wait_stream(side)
            return loss
        if self.graph is None:
            self._capture(inputs, targets)
        static_inputs, static_targets, static_loss = self.static
        if inputs.shape != static_inputs.shape:
            # A short last batch: run it eagerly into the graph's gradient buffers.
            return self._eager(inputs, targets)
        static_inputs.copy_(inputs)
        static_targets.copy_(targets)
        self.graph.replay()
        return static_loss

    def _capture(self, inputs: Tensor, targets: Tensor) -> None:
        static_inputs, static_targets = inputs.clone(), targets.clone()
        self.graph = torch.cuda.CUDAGraph()
        # Gradients are None here (zero_grad set them so), so the captured backward writes fresh
        # buffers instead of accumulating: every replay overwrites them with this step's gradients.
        with torch.cuda.graph(self.graph):
            static_loss = self._eager(static_inputs, static_targets)
        self.static = (static_inputs, static_targets, static_loss)

    def zero_grad(self, optimizer: torch.optim.Optimizer) -> None:
        if self.graph is None:
            optimizer.zero_grad(set_to_none=True)
        else:
            # The graph owns the gradient buffers: keep them. Zeroing matters only for an eager
            # fallback step, which accumulates into them.
            optimizer.zero_grad(set_to_none=False)
