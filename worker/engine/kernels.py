"""The fused CUDA kernels of mamba-ssm, where installed: every forward that can use them imports them from here
(Mamba's own fused mixer, with out_proj's LoRA low-rank, is worker/engine/mamba_inner.py)."""

import torch

from worker.engine.mamba_inner import selective_scan_cuda

try:  # optional: only on machines with CUDA and the mamba-ssm / causal-conv1d wheels
    # mamba-ssm's own fused Mamba mixer: Falcon-Mamba's, which normalises dt, B and C inside it.
    # The selective scan alone, with its backward: Mamba's forward over packed documents (scan.scan_with_resets).
    from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn, selective_scan_fn
    from mamba_ssm.ops.triton.layer_norm import rms_norm_fn
    from mamba_ssm.ops.triton.ssd_combined import mamba_split_conv1d_scan_combined
except ImportError:
    mamba_inner_fn = None
    selective_scan_fn = None
    mamba_split_conv1d_scan_combined = None
    rms_norm_fn = None

try:  # the causal conv alone, which keeps packed documents apart (documents.causal_conv1d)
    from causal_conv1d import causal_conv1d_fn
except ImportError:
    causal_conv1d_fn = None


def fused_kernels_available() -> bool:
    return selective_scan_cuda is not None and torch.cuda.is_available()
