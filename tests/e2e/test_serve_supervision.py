"""`mambaft serve` supervises its worker: a worker SIGKILLed mid-job (as the OOM killer does) is
reaped, logged and replaced within seconds, and its job resumes from its checkpoint long before its
lease would have run out; a worker that cannot start makes `serve` give up and exit non-zero."""

import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest
from sqlalchemy import select

from app.db import session_scope
from app.jobs.models import Job, JobEvent
from app.settings import Settings

from .factories import clean_env, demo_slice, free_port
from .service import Service, alive

# The default lease: the job must come back well before it runs out.
LEASE_S = 60
HEARTBEAT_S = 1
FAST = {
    "MAMBAFT_LEASE_SECONDS": str(LEASE_S),
    "MAMBAFT_HEARTBEAT_SECONDS": str(HEARTBEAT_S),
    "MAMBAFT_REAPER_INTERVAL_SECONDS": "1",
    # Often, so a checkpoint exists a few steps into the job.
    "MAMBAFT_CHECKPOINT_EVERY_STEPS": "2",
}
# /readyz counts a worker as alive for three heartbeats plus 5 s.
NO_WORKER = f"none seen in the last {3 * HEARTBEAT_S + 5} s"
# Worker start (Celery, torch) and first claim on a busy 2-core machine.
CLAIM_TIMEOUT_S = 90
# Noticing the death (1 s polls), the first backoff (1 s), the new worker's start and its first reaper pass;
# well under LEASE_S, so only the supervisor can have requeued the job in time.
REQUEUE_TIMEOUT_S = 40
JOB_TIMEOUT_S = 240
GIVE_UP_TIMEOUT_S = 300


def serve(tmp_path: Path, **env: str) -> Service:
    settings = Settings(data_dir=tmp_path / "var")
    assert settings.models_dir is not None
    service = Service(url=f"http://127.0.0.1:{free_port()}", models_dir=settings.models_dir, settings=settings, logs=[])
    port = service.url.rsplit(":", 1)[1]
    args = ["serve", "--host", "127.0.0.1", "--port", port, "--data-dir", str(settings.data_dir)]
    service.start(args, clean_env(**FAST, **env), tmp_path)
    return service


def create_job(client: httpx.Client, *, train_lines: int) -> str:
    files = {}
    for role, name, lines in (("training_file", "train.jsonl", train_lines), ("validation_file", "valid.jsonl", 8)):
        upload = client.post(
            "/v1/files", files={"file": (name, demo_slice(name, lines))}, data={"purpose": "fine-tune"}
        )
        files[role] = upload.raise_for_status().json()["id"]
    created = client.post(
        "/v1/fine_tuning/jobs",
        json={
            "model": "mamba-tiny",
            **files,
            "precision": "fp32",
            "seed": 3,
            "lora": {"r": 4, "alpha": 8, "target_modules": ["in_proj", "x_proj"]},
            "hyperparameters": {"n_epochs": 1, "batch_size": 2, "max_seq_len": 64, "learning_rate": 3e-3},
        },
    )
    return created.raise_for_status().json()["id"]


def events(settings: Settings, job_id: str) -> list[JobEvent]:
    with session_scope(settings.database_url) as session:
        return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def wait_for_event(service: Service, job_id: str, matches: Callable[[JobEvent], bool], timeout_s: float) -> JobEvent:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := [e for e in events(service.settings, job_id) if matches(e)]:
            return found[0]
        time.sleep(0.2)
    pytest.fail(f"job {job_id}: no such event after {timeout_s}s\n{service.log_tail()}")


def wait_terminal(service: Service, job_id: str) -> Job:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        with session_scope(service.settings.database_url) as session:
            job = session.get(Job, job_id)
        assert job is not None
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    pytest.fail(f"job {job_id} did not finish in {JOB_TIMEOUT_S}s\n{service.log_tail()}")


def is_transition(source: str, target: str) -> Callable[[JobEvent], bool]:
    return lambda e: e.type == "state" and (e.data or {}).get("from") == source and (e.data or {}).get("to") == target


def worker_of(service: Service) -> psutil.Process:
    """The one worker process `serve` runs (its only child once the tiny models are built)."""
    deadline = time.monotonic() + CLAIM_TIMEOUT_S
    while time.monotonic() < deadline:
        if len(workers := psutil.Process(service.processes[0].pid).children()) == 1:
            return workers[0]
        time.sleep(0.2)
    pytest.fail(f"serve has no single worker child\n{service.log_tail()}")


def test_a_sigkilled_worker_is_replaced_within_seconds_and_its_job_resumes_from_its_checkpoint(
    tmp_path: Path,
) -> None:
    service = serve(tmp_path, OMP_NUM_THREADS="1")
    try:
        ready = service.wait_ready(worker=True)
        assert ready.json()["checks"]["workers"] == "ok"
        with httpx.Client(base_url=service.url, timeout=30) as client:
            victim = create_job(client, train_lines=48)
            wait_for_event(service, victim, lambda e: e.type == "checkpoint", CLAIM_TIMEOUT_S)
            worker = worker_of(service)
            saved = max(e.data["step"] for e in events(service.settings, victim) if e.type == "checkpoint")

            worker.send_signal(signal.SIGKILL)  # what the OOM killer does
            # Within seconds: the lease (LEASE_S) is still far from running out.
            wait_for_event(service, victim, is_transition("running", "queued"), REQUEUE_TIMEOUT_S)
            assert not alive(worker.pid)  # reaped, not a zombie
            replacement = worker_of(service)
            assert replacement.pid != worker.pid
            log = service.logs[0].read_text(errors="replace")
            assert re.search(rf"worker \(pid {worker.pid}\) killed by SIGKILL", log), log[-4000:]
            assert "before it was ready" not in log  # a crash of a running worker, not a failed start

            later = create_job(client, train_lines=8)  # created after the kill: the new worker runs it too
            resumed = wait_for_event(
                service, victim, lambda e: e.message.startswith("Resuming from checkpoint"), CLAIM_TIMEOUT_S
            )
            assert resumed.data["step"] >= saved > 0
            for job_id in (victim, later):
                job = wait_terminal(service, job_id)
                assert job.status == "succeeded", f"{job.error}\n{service.log_tail()}"
            assert client.get("/readyz").json()["checks"]["workers"] == "ok"
    finally:
        service.stop()


def test_serve_gives_up_with_exit_1_when_its_worker_dies_at_every_start(tmp_path: Path) -> None:
    # A broker URL Celery has no transport for: the worker exits as it connects. The API still answers.
    service = serve(tmp_path, MAMBAFT_BROKER_URL="nonsense://")
    process = service.processes[0]
    deadline = time.monotonic() + GIVE_UP_TIMEOUT_S
    readyz = None
    while readyz is None and process.poll() is None:
        try:
            readyz = httpx.get(f"{service.url}/readyz", timeout=5)
        except httpx.TransportError:
            time.sleep(0.5)
    assert readyz is not None, service.log_tail()
    assert readyz.json()["checks"]["workers"] == NO_WORKER

    process.wait(timeout=max(deadline - time.monotonic(), 1))
    log = service.logs[0].read_text(errors="replace")
    assert process.returncode == 1, log[-4000:]
    assert len(re.findall(r"worker \(pid \d+\) exited with status 1", log)) == 5, log[-4000:]
    assert "it died before it was ready (5 of 5 in a row)" in log
    assert "giving up: the worker died before it was ready 5 times in a row" in log
    assert "mambaft: the worker keeps dying as it starts" in log
