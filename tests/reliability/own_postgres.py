"""A Postgres server of our own (initdb + pg_ctl in a temp folder, on a free port), so a test can stop
and restart it; the machine's shared server is never touched."""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from e2e.factories import free_port

BIN = Path("/usr/local/bin")
# initdb refuses to run as root; the cluster belongs to this account when the tests run as root.
RUN_AS = "postgres"


class OwnPostgres:
    def __init__(self) -> None:
        # Its own folder under /tmp: pytest's temp folders are private to root, which RUN_AS can't enter.
        self.folder = Path(tempfile.mkdtemp(prefix="mambaft-pg-"))
        self.data = self.folder / "pgdata"
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *command: str) -> None:
        prefix = ["runuser", "-u", RUN_AS, "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=60)

    def init(self) -> "OwnPostgres":
        if not (BIN / "initdb").exists():
            pytest.skip("initdb is not installed")
        if os.geteuid() == 0:
            shutil.chown(self.folder, RUN_AS)
        self._run(str(BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        return self

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.folder / "pg.log"), "-w", "start"
        )

    def stop(self) -> None:
        # Fast mode: clients are disconnected at once, as in a crash or a failover.
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        """Stop the server if it runs, and delete its folder."""
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
