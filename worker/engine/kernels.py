"""The fused CUDA kernels of mamba-ssm, where installed, and our selective scan (scan_cuda.py): every forward that
can use them imports them from here (Mamba's own fused mixer, with out_proj's LoRA low-rank, is
worker/engine/mamba_inner.py)."""

import torch
from torch import Tensor

from worker.engine import scan_cuda
from worker.engine.scan import scan_with_resets

try:  # optional: only on machines with CUDA and the mamba-ssm / causal-conv1d wheels
    # The selective scan's CUDA extension, which the fused Mamba mixer calls (mamba_inner.py).
    import selective_scan_cuda

    # The selective scan alone, with its backward: the Mamba mixers with norms on Δ, B and C (Falcon-Mamba,
    # Jamba) and, where our kernel does not run, Mamba over packed documents (scan.scan_with_resets).
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    from mamba_ssm.ops.triton.layer_norm import rms_norm_fn
    from mamba_ssm.ops.triton.ssd_combined import mamba_split_conv1d_scan_combined
except ImportError:
    selective_scan_cuda = None
    selective_scan_fn = None
    mamba_split_conv1d_scan_combined = None
    rms_norm_fn = None

try:  # the causal conv alone, which keeps packed documents apart (documents.causal_conv1d)
    from causal_conv1d import causal_conv1d_fn
except ImportError:
    causal_conv1d_fn = None


def fused_kernels_available() -> bool:
    return selective_scan_cuda is not None and torch.cuda.is_available()


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor,
    z: Tensor,
    delta_bias: Tensor,
    reset: Tensor | None = None,
) -> Tensor:
    """The selective scan on CUDA, called as scan.py's torch scans are (softplus of delta + delta_bias; `reset`
    (b, l) starts a document): our kernel (scan_cuda.py) where it takes the shapes, else mamba-ssm's.

    mamba-ssm's kernel takes delta, B, C and z in u's dtype and D and delta_bias in fp32, and casts nothing: under
    autocast a norm's fp32 weight leaves B and C fp32 while u is half, which selective_scan_cuda.fwd refuses.
    It has no resets: scan.scan_with_resets makes them through its inputs."""
    if scan_cuda.available(u, A, B):
        return scan_cuda.SelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, reset)
    dtype = u.dtype
    inputs = (u, delta.to(dtype), A, B.to(dtype), C.to(dtype), D.float(), z.to(dtype), delta_bias.float())
    if reset is not None:
        return scan_with_resets(selective_scan_fn, *inputs, reset=reset)
    return selective_scan_fn(*inputs, delta_softplus=True)
