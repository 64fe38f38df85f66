"""A CPU job's freed tensors are reused without the kernel faulting their pages in again, and handed back after."""

import resource

import pytest
import torch

from worker.engine.heap import _glibc, retained_heap
from worker.memory_watchdog import resident_bytes

pytestmark = pytest.mark.skipif(_glibc() is None, reason="mallopt(3) settings are glibc's")

# Ten 16 MiB tensors, the scan's (b, d_inner, l, d_state) size on the tiny step: freed together they leave far more
# free at the top of the heap than glibc keeps by itself (64 MiB at most).
TENSORS, ELEMENTS = 10, 4 * 2**20
BYTES = TENSORS * ELEMENTS * 4


def _step() -> int:
    """Minor page faults of allocating and writing the tensors, then freeing them."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensors = [torch.ones(ELEMENTS) for _ in range(TENSORS)]
    del tensors
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


def test_freed_tensors_are_reused_while_training_and_handed_back_after():
    pages = BYTES // resource.getpagesize()
    with retained_heap():
        # The first steps grow the heap (an aligned allocation does not fit exactly into a chunk of its size
        # freed); then four steps together fault in less than half of one step's pages.
        _step()
        _step()
        assert sum(_step() for _ in range(4)) < pages // 2
        retained = resident_bytes()
    assert resident_bytes() < retained - BYTES // 2
    assert _step() > pages // 2
