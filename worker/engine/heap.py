"""Keeping freed host memory for reuse while a CPU job trains, as the CUDA caching allocator does on the GPU.

PyTorch's CPU tensors come from glibc's malloc. A training step frees and allocates the same large tensors
every step (the scan's (b, d_inner, l, d_state) states and decays: 16 MiB each on the tiny shape), and at the
end of backward glibc hands the freed top of the heap back to the kernel, so the next step faults every page
in again: ~20k page faults a step on the tiny CPU step, 15-25% of its time (bench/RESULTS.md). Inside
`retained_heap()` freed memory stays in the heap (up to glibc's largest mmap threshold, 32 MiB an allocation;
larger ones are still mapped and unmapped each time). On leaving, the free memory is returned and the heap
trims as glibc's own adjustment leaves it once it has freed an allocation that large. Elsewhere than glibc it
does nothing.
"""

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

# mallopt(3) parameters.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MAX_MMAP_THRESHOLD = 32 * 2**20  # glibc refuses more (half its 64 MiB arena heaps on 64-bit)
NEVER_TRIM = 2**31 - 1


@cache
def _glibc() -> ctypes.CDLL | None:
    process = ctypes.CDLL(None)
    return process if hasattr(process, "gnu_get_libc_version") else None


@contextmanager
def retained_heap(enabled: bool = True) -> Iterator[None]:
    """While inside, allocations up to 32 MiB come from the heap and freed memory is not handed back. Not
    reentrant: the setting is the process's (the worker trains one job at a time)."""
    libc = _glibc() if enabled else None
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD)
    libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)
    try:
        yield
    finally:
        libc.mallopt(M_TRIM_THRESHOLD, 2 * MAX_MMAP_THRESHOLD)
        libc.malloc_trim(0)
