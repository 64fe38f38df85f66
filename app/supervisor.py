"""Keeps the worker subprocess of `mambaft serve` running.

A thread polls the worker every second (which also reaps it, so a dead worker never lingers as a
zombie). When it dies, the supervisor logs how, expires the leases it held so the next worker's
first reaper pass requeues its job at once (the retry resumes from the last checkpoint), removes its
liveness row so /readyz stops counting it, and starts a new worker after a backoff. A worker that
keeps dying before it is ready (before its first heartbeat: a bad setting, a broken install) cannot
start at all: after MAX_FAILED_STARTS such deaths in a row the supervisor gives up and tells `serve`
to exit, instead of restarting it forever.
"""

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable

from app.settings import Settings
from worker.lease import expire_leases_of, worker_id
from worker.liveness import forget

log = logging.getLogger("mambaft.supervisor")

POLL_S = 1.0
# Readiness, not time since start, tells a failed start from a crash: importing torch and initialising
# CUDA take from seconds to a minute, depending on the machine and its load.
MAX_FAILED_STARTS = 5
# Waits before a restart: 1 s after a crash, doubling with each failed start in a row (1, 2, 4, 8 s).
FIRST_BACKOFF_S = 1.0
# A warm-shutting-down worker checkpoints its job and hands it back; give it that long before killing.
WORKER_STOP_TIMEOUT_S = 120


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exited with status {returncode}"


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (Celery's warm shutdown: the running job checkpoints and is requeued), SIGKILL if it hangs."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(WORKER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class WorkerSupervisor:
    """Runs `command` as a child process and restarts it when it dies, until `stop` or it gives up;
    on giving up it calls `on_give_up` (from its own thread) and sets `gave_up`."""

    def __init__(self, command: list[str], settings: Settings, on_give_up: Callable[[], None]) -> None:
        self._command = command
        self._settings = settings
        self._on_give_up = on_give_up
        self._stopping = threading.Event()
        # Held while a worker is started or stopped, so `stop` never misses one started concurrently.
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self.gave_up = False
        self._thread = threading.Thread(target=self._watch, name="mambaft-supervisor", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def stop(self) -> None:
        """Stop supervising and stop the worker (warm shutdown first)."""
        with self._lock:
            self._stopping.set()
            process = self._process
        if process is not None:
            stop_process(process)
        if self._thread.is_alive():
            self._thread.join()

    def _spawn(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            self._process = subprocess.Popen(self._command)
            self._started_at = time.monotonic()
        log.info("worker started (pid %d)", self._process.pid)

    def _watch(self) -> None:
        failed_starts = 0
        while not self._stopping.wait(POLL_S):
            process = self._process
            if process is None or (returncode := process.poll()) is None or self._stopping.is_set():
                continue
            lived = time.monotonic() - self._started_at
            log.error("worker (pid %d) %s after %.0f s", process.pid, describe_exit(returncode), lived)
            if self._clean_up_after(process.pid):
                failed_starts = 0
            else:
                failed_starts += 1
                log.error("it died before it was ready (%d of %d in a row)", failed_starts, MAX_FAILED_STARTS)
            if failed_starts >= MAX_FAILED_STARTS:
                log.error("giving up: the worker died before it was ready %d times in a row", failed_starts)
                self.gave_up = True
                self._on_give_up()
                return
            delay = FIRST_BACKOFF_S * 2 ** max(failed_starts - 1, 0)
            log.info("restarting the worker in %.0f s", delay)
            if self._stopping.wait(delay):
                return
            self._spawn()

    def _clean_up_after(self, pid: int) -> bool:
        """Expire the dead worker's leases and remove its liveness row; returns whether it had one (had
        become ready). A database that cannot be reached counts as not ready; the leases then run out
        by themselves."""
        dead = worker_id(pid)
        try:
            if expired := expire_leases_of(self._settings, dead):
                log.info("expired the dead worker's leases of %s: the next reaper pass requeues them", expired)
            return forget(self._settings, dead)
        except Exception:
            log.exception("could not clean up after the dead worker")
            return False
