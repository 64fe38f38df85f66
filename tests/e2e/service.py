"""A deployment under test as real processes (`mambaft serve`, or `mambaft api` + `mambaft worker`),
their logs, and a clean stop that checks nothing they started outlives them."""

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from app.settings import Settings

from .factories import MAMBAFT, clean_env, free_port

START_TIMEOUT_S = 180
JOB_TIMEOUT_S = 300
DESCENDANT_GRACE_S = 5
# Quick, so a test sees the reaper act within seconds.
REAPER_INTERVAL_S = "2"
# The tests' webhook receivers listen on loopback; a quick sender keeps their waits short.
WEBHOOK_ENV = {"MAMBAFT_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true", "MAMBAFT_WEBHOOK_POLL_SECONDS": "0.5"}


@dataclass
class Service:
    url: str
    models_dir: Path
    # The deployment's settings, for reaching into its database and storage as a second worker would.
    settings: Settings
    logs: list[Path]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def start(self, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
        log = cwd / f"{args[0]}-{len(self.logs)}.log"
        self.logs.append(log)
        process = subprocess.Popen([MAMBAFT, *args], env=env, cwd=cwd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def log_tail(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-4000:]}" for log in self.logs)

    def wait_ready(self, *, worker: bool = False) -> httpx.Response:
        """The first 200 of /readyz; with `worker`, the first that also says a worker is alive."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert all(p.poll() is None for p in self.processes), f"a service process exited\n{self.log_tail()}"
            try:
                ready = httpx.get(f"{self.url}/readyz", timeout=5)
                if ready.status_code == 200 and (not worker or ready.json()["status"] == "ok"):
                    return ready
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        pytest.fail(f"service not ready after {START_TIMEOUT_S}s\n{self.log_tail()}")

    def wait_terminal(self, client: httpx.Client, job_id: str) -> dict:
        """The job as GET returns it once it has succeeded, failed or been cancelled."""
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while time.monotonic() < deadline:
            job = client.get(f"/v1/fine_tuning/jobs/{job_id}").raise_for_status().json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            time.sleep(0.5)
        pytest.fail(f"job {job_id} did not finish in {JOB_TIMEOUT_S}s\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM each process we started, as an operator (or Ctrl-C) would, and check that everything
        it started is gone too."""
        descendants = [pid for p in self.processes for pid in children(p.pid)]
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(timeout=150)
        # A moment's grace: multiprocessing's helper processes (uvicorn's workers' resource tracker) exit
        # once they see their parent's pipe close, just after it.
        deadline = time.monotonic() + DESCENDANT_GRACE_S
        while any(alive(pid) for pid in descendants) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in descendants:
            assert not alive(pid), f"process {pid} outlived its parent\n{self.log_tail()}"


def serve_with_key(folder: Path, models_dir: Path, owner: str, **settings: str) -> Service:
    """`mambaft serve` over a fresh data dir in `folder` holding one key of `owner` (so authentication is
    on), up with its worker; the key is in `headers`. `settings`: more MAMBAFT_* variables for it."""
    data_dir = folder / "var"
    env = clean_env(MAMBAFT_MODELS_DIR=str(models_dir), **settings)
    created = subprocess.run(
        [MAMBAFT, "create-key", "--owner", owner, "--data-dir", str(data_dir)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    service = Service(f"http://127.0.0.1:{free_port()}", models_dir, Settings(data_dir=data_dir), logs=[])
    service.headers = {"Authorization": f"Bearer {created.stdout.strip()}"}
    port = service.url.rsplit(":", 1)[1]
    service.start(["serve", "--host", "127.0.0.1", "--port", port, "--data-dir", str(data_dir)], env, folder)
    service.wait_ready(worker=True)
    return service


def children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
