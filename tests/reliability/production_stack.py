"""The production stack of a fault test, all of it the test's own: Postgres (initdb), Redis
(redis-server) and an S3 server (moto) on free loopback ports, `mambaft api` and `mambaft worker`
processes, with leases, heartbeats and reaper passes of seconds so a lost worker is noticed quickly.

The test watches the job in the database directly (it must keep watching while the API answers 503)."""

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app.db import get_engine, session_scope
from app.jobs.models import Job, JobEvent
from app.migrate import upgrade_database
from e2e.conftest import S3_BUCKET
from e2e.factories import demo_slice

from .own_postgres import OwnPostgres
from .own_redis import OwnRedis
from .servers import ApiServer, WorkerProcess

LEASE_S = 4
REAPER_INTERVAL_S = 1
FAST_RECOVERY = {
    "MAMBAFT_LEASE_SECONDS": str(LEASE_S),
    "MAMBAFT_HEARTBEAT_SECONDS": "1",
    "MAMBAFT_REAPER_INTERVAL_SECONDS": str(REAPER_INTERVAL_S),
    # Often, so a checkpoint exists a few steps into the job.
    "MAMBAFT_CHECKPOINT_EVERY_STEPS": "2",
}
T = TypeVar("T")
TERMINAL = ("succeeded", "failed", "cancelled")
JOB_TIMEOUT_S = 180


@dataclass
class ProductionStack:
    folder: Path
    postgres: OwnPostgres
    redis: OwnRedis
    env: dict[str, str]
    api: ApiServer | None = None
    workers: list[WorkerProcess] = field(default_factory=list)

    def start_worker(self) -> WorkerProcess:
        worker = WorkerProcess(self.folder, self.env)
        self.workers.append(worker)
        return worker

    def restart_api(self) -> ApiServer:
        """SIGKILL the API and start a new one on the same port, as a supervisor restarting it would."""
        assert self.api is not None
        self.api.kill()
        self.api = ApiServer(self.folder, self.env, port=self.api.port)
        return self.api

    def job_request(self, *, train_lines: int) -> dict[str, Any]:
        """The body of a fp32 (deterministic on CPU) LoRA job on mamba-tiny, its files uploaded through the API."""
        assert self.api is not None
        self.api.wait_up()
        with httpx.Client(base_url=self.api.url, timeout=30) as client:
            files = {}
            uploads = (("training_file", "train.jsonl", train_lines), ("validation_file", "valid.jsonl", 8))
            for role, name, lines in uploads:
                content = {"file": (name, demo_slice(name, lines))}
                upload = client.post("/v1/files", files=content, data={"purpose": "fine-tune"})
                files[role] = upload.raise_for_status().json()["id"]
        return {
            "model": "mamba-tiny",
            **files,
            "precision": "fp32",
            "seed": 3,
            "lora": {"r": 4, "alpha": 8, "target_modules": ["in_proj", "x_proj"]},
            "hyperparameters": {"n_epochs": 1, "batch_size": 2, "max_seq_len": 64, "learning_rate": 3e-3},
        }

    def create_job(self, *, train_lines: int) -> str:
        body = self.job_request(train_lines=train_lines)
        assert self.api is not None
        created = httpx.post(f"{self.api.url}/v1/fine_tuning/jobs", json=body, timeout=30)
        return created.raise_for_status().json()["id"]

    def _read(self, read: Callable[[Session], T]) -> T:
        """`read(session)`, retried while our own Postgres is down or restarting."""
        while True:
            try:
                with session_scope(self.postgres.url) as session:
                    return read(session)
            except OperationalError:
                time.sleep(0.2)

    def job(self, job_id: str) -> Job:
        job = self._read(lambda s: s.get(Job, job_id))
        assert job is not None
        return job

    def job_count(self) -> int:
        """Jobs in the database, of every owner: a duplicate create shows up here even if no list shows it."""
        return self._read(lambda s: s.scalar(select(func.count()).select_from(Job)) or 0)

    def events(self, job_id: str) -> list[JobEvent]:
        statement = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
        return self._read(lambda s: list(s.scalars(statement)))

    def wait_for_event(self, job_id: str, matches: Callable[[JobEvent], bool], timeout_s: float) -> JobEvent:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if found := [e for e in self.events(job_id) if matches(e)]:
                return found[0]
            time.sleep(0.1)
        pytest.fail(f"job {job_id}: no such event after {timeout_s}s\n{self.log_tail()}")

    def wait_terminal(self, job_id: str, timeout_s: float = JOB_TIMEOUT_S) -> Job:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if (job := self.job(job_id)).status in TERMINAL:
                return job
            time.sleep(0.5)
        pytest.fail(f"job {job_id} still {self.job(job_id).status} after {timeout_s}s\n{self.log_tail()}")

    def log_tail(self) -> str:
        logs = [w.log for w in self.workers] + ([self.api.log] if self.api else [])
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for log in logs)


def worker_pid(claim: JobEvent) -> int:
    """The pid in the owner id (host:pid:nonce) of a `queued -> running` event."""
    return int(claim.data["worker"].split(":")[1])


def is_transition(source: str, target: str) -> Callable[[JobEvent], bool]:
    return lambda e: e.type == "state" and (e.data or {}).get("from") == source and (e.data or {}).get("to") == target


@contextmanager
def production_stack(folder: Path, models_dir: Path, s3_endpoint: str) -> Iterator[ProductionStack]:
    """Our own Postgres and Redis, a fresh prefix in the S3 server, and the API; workers are started
    by the test. Everything is stopped and removed afterwards, also when the test fails."""
    postgres, redis = OwnPostgres(), OwnRedis()
    stack = ProductionStack(folder=folder, postgres=postgres, redis=redis, env={})
    try:
        postgres.init().start()
        redis.start()
        upgrade_database(postgres.url)
        stack.env = {
            "MAMBAFT_DATA_DIR": str(folder / "var"),
            "MAMBAFT_DATABASE_URL": postgres.url,
            "MAMBAFT_BROKER_URL": redis.url,
            "MAMBAFT_STORAGE_URL": f"s3://{S3_BUCKET}/{uuid.uuid4().hex}",
            "MAMBAFT_S3_ENDPOINT_URL": s3_endpoint,
            "MAMBAFT_MODELS_DIR": str(models_dir),
            "MAMBAFT_AUTH_DISABLED": "true",
            **FAST_RECOVERY,
            # Two workers share two cores: OpenMP threads of each would spin against the other's.
            "OMP_NUM_THREADS": "1",
        }
        stack.api = ApiServer(folder, stack.env)
        yield stack
    finally:
        for worker in stack.workers:
            worker.stop()
        if stack.api is not None:
            stack.api.stop()
        get_engine(postgres.url).dispose()
        redis.remove()
        postgres.remove()
