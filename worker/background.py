"""Daemon threads of a worker: one that lives for one `with` block (a job's lease heartbeat, its memory
watchdog), and one that repeats a pass until the worker stops (the reaper, the webhook sender)."""

import logging
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Self

log = logging.getLogger(__name__)


class BackgroundThread:
    """Entering starts a daemon thread running `_run`; leaving sets `_stop` and waits for `_run` to return,
    which it must do soon after `_stop` is set."""

    def __init__(self, name: str) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()


def start_periodic(name: str, every: float, work: Callable[[], object], stop: threading.Event) -> threading.Thread:
    """A daemon thread running `work` at once and then every `every` seconds until `stop` is set; a pass
    that raises is logged and the next one runs on time (the database may be briefly unreachable)."""

    def loop() -> None:
        while True:
            try:
                work()
            except Exception:
                log.exception("%s pass failed", name)
            if stop.wait(every):
                return

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread
