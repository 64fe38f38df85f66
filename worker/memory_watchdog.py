"""Ends a job attempt whose process outgrows its memory budget, before the kernel's OOM killer does.

The OOM killer SIGKILLs the whole worker with no chance to say why; the reaper then sees a lost
worker and retries the job, which dies the same way until max_attempts. This thread samples the
process's resident memory; once it has grown past the budget since the attempt began, it records the
failure (the attempt still holds the lease, so the job ends failed and is never retried) and then
kills its own process, as the OOM killer was about to: only that frees memory held by a step in
progress, and only that stops an allocation the kernel would otherwise grant until the host swaps or
the killer picks another process.
"""

import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Self

from worker.background import BackgroundThread

log = logging.getLogger(__name__)

SAMPLE_SECONDS = 0.1


def resident_bytes() -> int:
    """This process's resident memory (RSS)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class MemoryWatchdog(BackgroundThread):
    """While entered: if RSS grows by more than `limit_bytes`, call `on_exceeded(grown)`, then SIGKILL."""

    def __init__(self, limit_bytes: int, on_exceeded: Callable[[int], None]) -> None:
        self.limit_bytes = limit_bytes
        self.on_exceeded = on_exceeded
        self._baseline = 0
        super().__init__("memory-watchdog")

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            grown = resident_bytes() - self._baseline
            if grown <= self.limit_bytes:
                continue
            try:
                self.on_exceeded(grown)
            except Exception:  # the kill below matters more than the record
                log.exception("could not record the memory failure")
            finally:
                os.kill(os.getpid(), signal.SIGKILL)

    def __enter__(self) -> Self:
        self._baseline = resident_bytes()
        return super().__enter__()
