"""A daemon thread that lives for one `with` block: a job's lease heartbeat, its memory watchdog."""

import threading
from types import TracebackType
from typing import Self


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
