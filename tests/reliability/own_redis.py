"""A Redis server of our own (`redis-server` in a temp folder, on a free port), so a test can stop and
restart it; the machine's shared server is never touched."""

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis

from e2e.factories import free_port

START_TIMEOUT_S = 10


class OwnRedis:
    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="mambaft-redis-"))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if shutil.which("redis-server") is None:
            pytest.skip("redis-server is not installed")
        # No persistence: a restart loses every message, the worst case a broker restart can bring.
        command = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.folder),
        ]
        log = (self.folder / "redis.log").open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(host="127.0.0.1", port=self.port)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise TimeoutError(f"redis-server not up on {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def remove(self) -> None:
        """Stop the server if it runs, and delete its folder."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
