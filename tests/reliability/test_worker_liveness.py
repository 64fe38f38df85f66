"""On the production stack, `/readyz` tells whether any worker is alive: `mambaft api` alone is ready
(200) but `degraded`, naming the workers; a `mambaft worker` that starts beating makes it `ok`; once
that worker is SIGKILLed, the check names the workers again within its window."""

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .production_stack import FAST_RECOVERY, ProductionStack, production_stack

# Three heartbeats plus 5 s of slack.
WINDOW_S = 3 * int(FAST_RECOVERY["MAMBAFT_HEARTBEAT_SECONDS"]) + 5
NO_WORKER = f"none seen in the last {WINDOW_S} s"
# Worker start (Celery, torch) on a busy 2-core machine.
WORKER_START_TIMEOUT_S = 90


@pytest.fixture
def stack(tmp_path: Path, models_dir: Path, s3_endpoint: str) -> Iterator[ProductionStack]:
    with production_stack(tmp_path, models_dir, s3_endpoint) as running:
        yield running


def wait_for_workers(stack: ProductionStack, state: str, timeout_s: float) -> httpx.Response:
    assert stack.api is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (ready := httpx.get(f"{stack.api.url}/readyz", timeout=10)).json()["checks"]["workers"] == state:
            return ready
        time.sleep(0.2)
    pytest.fail(f"/readyz never said workers {state!r} in {timeout_s}s\n{stack.log_tail()}")


def test_readyz_names_the_workers_until_one_beats_and_again_after_it_is_killed(stack: ProductionStack) -> None:
    assert stack.api is not None
    stack.api.wait_up()
    alone = httpx.get(f"{stack.api.url}/readyz", timeout=10)
    assert alone.status_code == 200  # the API serves; jobs would wait in the queue
    assert alone.json() == {
        "status": "degraded",
        "checks": {"database": "ok", "broker": "ok", "storage": "ok", "workers": NO_WORKER},
    }

    worker = stack.start_worker()
    beating = wait_for_workers(stack, "ok", WORKER_START_TIMEOUT_S)
    assert (beating.status_code, beating.json()["status"]) == (200, "ok")

    worker.kill()
    killed_at = time.monotonic()
    wait_for_workers(stack, NO_WORKER, WINDOW_S + 5)
    assert time.monotonic() - killed_at > WINDOW_S - 2  # its last beat counted until the window passed
