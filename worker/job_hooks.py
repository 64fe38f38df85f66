"""The engine's callbacks for one job attempt: progress and checkpoints into the DB and storage, and
the stop signal (cancel requested, lease lost, worker shutting down)."""

import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from app.archive import pack
from app.db import new_id, now, session_scope
from app.jobs.keys import checkpoint_key
from app.jobs.lifecycle import JOBS, JobStatus, record_event
from app.jobs.models import Checkpoint, Job
from app.settings import Settings
from app.storage import ObjectStorage, put_file_retrying
from worker.engine.spec import Progress, TrainHooks
from worker.lease import Heartbeat, lock

# Progress is written at most this often, unless the job has few steps: then every step is shown.
PROGRESS_INTERVAL_S = 2.0
FEW_STEPS = 50
# How often should_stop asks the database whether a cancel was requested.
CANCEL_POLL_S = 1.0


@dataclass
class JobHooks:
    settings: Settings
    storage: ObjectStorage
    job_id: str
    holder: str
    heartbeat: Heartbeat
    shutdown: threading.Event
    cancel_requested: bool = False
    latest: Progress | None = None  # the last step's, which the next checkpoint carries as its metrics
    _last_poll: float = field(default=float("-inf"))
    _last_progress: float = field(default=float("-inf"))

    def as_train_hooks(self) -> TrainHooks:
        return TrainHooks(
            on_progress=self.on_progress,
            on_checkpoint=self.on_checkpoint,
            should_stop=self.should_stop,
            on_message=self.on_message,
        )

    @property
    def lease_lost(self) -> bool:
        return self.heartbeat.lost.is_set()

    def on_progress(self, progress: Progress) -> None:
        self.latest = progress
        due = time.monotonic() - self._last_progress >= PROGRESS_INTERVAL_S
        if not (due or progress.total_steps <= FEW_STEPS or progress.step == progress.total_steps):
            return
        self._last_progress = time.monotonic()
        with session_scope(self.settings.database_url) as session:
            job = lock(session, JOBS, self.job_id, self.holder)
            if job is None:
                self.heartbeat.lost.set()
                return
            job.current_step = progress.step
            job.total_steps = progress.total_steps
            record_event(
                session,
                self.job_id,
                "progress",
                f"Step {progress.step}/{progress.total_steps}: training loss={progress.loss:.4f}",
                data={
                    "step": progress.step,
                    "total_steps": progress.total_steps,
                    "epoch": progress.epoch,
                    "loss": progress.loss,
                    "learning_rate": progress.learning_rate,
                    "tokens_per_second": progress.tokens_per_second,
                    "steps_per_second": progress.steps_per_second,
                    "step_seconds": progress.step_seconds,
                    "eta_seconds": progress.eta_seconds,
                    "trained_tokens": progress.trained_tokens,
                    "skipped_steps": progress.skipped_steps,
                    "peak_memory_bytes": progress.peak_memory_bytes,
                },
            )

    def on_checkpoint(self, folder: Path, step: int) -> None:
        key = checkpoint_key(self.job_id, step)
        with tempfile.TemporaryDirectory(prefix="mambaft-ckpt-") as tmp:
            # Training waits out a short storage outage here instead of losing the attempt; the heartbeat
            # thread keeps the lease meanwhile.
            archive = pack(folder, Path(tmp) / "checkpoint.tar.gz")
            put_file_retrying(self.storage, key, archive, retry_seconds=self.settings.storage_retry_seconds)
        with session_scope(self.settings.database_url) as session:
            if lock(session, JOBS, self.job_id, self.holder) is None:
                self.heartbeat.lost.set()
                return
            # The object is complete before its row exists, so a resume never finds a partial one.
            metrics = self.latest.row() if self.latest is not None and self.latest.step == step else {"step": step}
            row = Checkpoint(
                id=new_id("ftckpt"), job_id=self.job_id, step=step, created_at=now(), storage_key=key, metrics=metrics
            )
            session.add(row)
            record_event(session, self.job_id, "checkpoint", f"Checkpoint saved at step {step}", data={"step": step})

    def on_message(self, message: str) -> None:
        with session_scope(self.settings.database_url) as session:
            if lock(session, JOBS, self.job_id, self.holder) is not None:
                record_event(session, self.job_id, "message", message)

    def should_stop(self) -> bool:
        if time.monotonic() - self._last_poll >= CANCEL_POLL_S:
            self._last_poll = time.monotonic()
            self._poll()
        return self.cancel_requested or self.lease_lost or self.shutdown.is_set()

    def _poll(self) -> None:
        with session_scope(self.settings.database_url) as session:
            row = session.execute(
                select(Job.cancel_requested, Job.lease_owner, Job.status).where(Job.id == self.job_id)
            ).one_or_none()
        if row is None or row.lease_owner != self.holder or row.status != JobStatus.RUNNING:
            self.heartbeat.lost.set()
        elif row.cancel_requested:
            self.cancel_requested = True
