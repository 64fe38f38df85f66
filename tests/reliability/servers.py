"""Real service processes for the reliability tests: an API server (`mambaft api`) on a free port."""

import subprocess
import time
from pathlib import Path

import httpx

from app.auth.models import ApiKey
from app.auth.service import create_api_key
from app.db import session_scope
from app.settings import Settings
from e2e.factories import MAMBAFT, clean_env, free_port

START_TIMEOUT_S = 60


class ApiServer:
    """`mambaft api` on a loopback port (a free one unless given), its log in `folder`; stopped with SIGTERM."""

    def __init__(self, folder: Path, env: dict[str, str], port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # One log per process, also when a restarted API takes over the port.
        self.log = folder / f"api-{self.port}-{time.monotonic_ns()}.log"
        self.process = subprocess.Popen(
            [MAMBAFT, "api", "--host", "127.0.0.1", "--port", str(self.port)],
            env=clean_env(**env),
            cwd=folder,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def wait_up(self) -> "ApiServer":
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"API exited:\n{self.log.read_text()[-3000:]}"
            try:
                httpx.get(f"{self.url}/healthz", timeout=2)
                return self
            except httpx.TransportError:
                time.sleep(0.2)
        raise TimeoutError(f"API not up after {START_TIMEOUT_S}s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: requests in flight are cut off and no shutdown handler runs."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def api_with_key(folder: Path, settings: Settings, **env: str) -> tuple[ApiServer, ApiKey, str]:
    """`mambaft api` over `settings`' data dir and database, up, with a new key of owner alice: (server,
    key row, key). `env` adds MAMBAFT_* variables."""
    with session_scope(settings.database_url) as session:
        row, key = create_api_key(session=session, owner="alice")
    base = {"MAMBAFT_DATA_DIR": str(settings.data_dir), "MAMBAFT_DATABASE_URL": settings.database_url}
    return ApiServer(folder, base | env).wait_up(), row, key


class WorkerProcess:
    """`mambaft worker` (which execs Celery, so this pid is the worker's), its log in `folder`."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.log = folder / f"worker-{time.monotonic_ns()}.log"
        self.process = subprocess.Popen(
            [MAMBAFT, "worker"], env=clean_env(**env), cwd=folder, stdout=self.log.open("wb"), stderr=subprocess.STDOUT
        )
        self.pid = self.process.pid

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, as when the host or the OOM killer takes the process."""
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # warm shutdown: a running job is handed back
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()
