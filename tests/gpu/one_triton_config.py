"""pytest plugin for the GPU correctness tests: each of mamba-ssm's autotuned Triton kernels keeps one config.

On a new shape or dtype the autotuner compiles and times every config of every kernel: some 220 configs over
27 kernels, about 100 s on an H200, most of a device call. The values the kernels compute do not depend on the
config, so the parity, packing and generation tests load this (`python3 -m pytest -p tests.gpu.one_triton_config
tests/gpu`); the speed does, so the benchmarks never do. The config kept is the smallest (tiles times pipeline
stages), which fits the shared memory of any GPU the larger ones were written for.
"""

import importlib
import math
import sys

import pytest


def _smallest(configs: list) -> list:
    return [min(configs, key=lambda c: math.prod(c.kwargs.values()) * c.num_stages * c.num_warps)]


# Every module of mamba-ssm with autotuned kernels (ssd_combined imports the SSD kernels' own).
MODULES = ("ssd_combined", "layer_norm", "k_activations", "ssd_state_passing")


@pytest.hookimpl
def pytest_configure(config: pytest.Config) -> None:
    try:
        from triton.runtime.autotuner import Autotuner
    except ImportError:
        return
    for name in MODULES:
        try:
            importlib.import_module(f"mamba_ssm.ops.triton.{name}")
        except ImportError:
            return
    for name, module in list(sys.modules.items()):
        if not name.startswith("mamba_ssm.ops.triton") or module is None:
            continue
        for kernel in vars(module).values():
            while kernel is not None and not isinstance(kernel, Autotuner):
                kernel = getattr(kernel, "fn", None)  # through @triton.heuristics to the autotuner it wraps
            if kernel is not None and len(kernel.configs) > 1:
                kernel.configs = _smallest(kernel.configs)
