"""One attempt at a fine-tuning job: claim it, fetch its inputs, train, publish the adapter.

Written without Celery so tests drive it directly. Whatever happens, the job leaves `running`: it ends
succeeded, failed or cancelled, is handed back to the queue on a graceful shutdown, or (if this
process dies) keeps an expiring lease that the reaper turns into a retry from the last checkpoint.
"""

import json
import logging
import tempfile
import threading
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from app import queue
from app.archive import pack, unpack
from app.db import session_scope
from app.files.models import File
from app.jobs.contract import HyperparameterSpec, LoraSpec
from app.jobs.keys import adapter_key, merged_key
from app.jobs.lifecycle import JOBS, JobStatus, record_event, transition
from app.jobs.models import Checkpoint, Job
from app.settings import Settings
from app.storage import ObjectNotFound, ObjectStorage, put_file_retrying, storage_from_settings
from app.work.dispatch import send_committed
from worker.engine.loading import pick_device
from worker.engine.memory import LOWER, GiB, device_budget
from worker.engine.spec import (
    EngineFailure,
    InsufficientMemory,
    TrainHooks,
    TrainingStopped,
    TrainResult,
    TrainSpec,
)
from worker.engine.trainer import train as engine_train
from worker.failures import failure_body
from worker.job_hooks import JobHooks
from worker.job_results import store_results
from worker.job_stability import store_stability_report
from worker.lease import Heartbeat, claim, lock, new_holder_id
from worker.memory_watchdog import MemoryWatchdog
from worker.model_store import model_source
from worker.trackers.session import Trackers

log = logging.getLogger(__name__)

TrainFn = Callable[[TrainSpec, TrainHooks], TrainResult]

# Shipped beside the adapter, so a client can load base + adapter + tokenizer from what it downloaded.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
)
ADAPTER_CONFIG = "adapter_config.json"  # peft's name for it


class JobFailed(EngineFailure):
    """A job the worker gives up on before training (an input gone); `code` says which."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def fine_tuned_model_id(job: Job) -> str:
    return f"{job.model}:ft-{job.suffix or ''}:{job.id}"


def name_base_model(adapter_dir: Path, model_id: str) -> None:
    """Make the adapter's config name its base by the job's model id (a hub id or a local model's id).

    peft writes where this worker loaded the base from, a folder that means nothing to the client and
    tells it about the server's disk; the model id is what the client knows the base by.
    """
    config_path = adapter_dir / ADAPTER_CONFIG
    if not config_path.is_file():  # full fine-tuning publishes a whole model, no adapter
        return
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = model_id
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))


def build_spec(
    job: Job,
    *,
    settings: Settings,
    model: Path | str,
    workdir: Path,
    inputs: dict[str, Path],
    resume: Path | None,
    memory_budget: int | None,
) -> TrainSpec:
    hyperparameters = HyperparameterSpec.from_stored(job.hyperparameters)
    return TrainSpec(
        model=str(model),
        train_path=inputs["train"],
        validation_path=inputs.get("validation"),
        output_dir=workdir / "output",
        precision=job.precision,
        lora=LoraSpec.from_stored(job.lora) if job.lora is not None else None,
        seed=job.seed,
        checkpoint_every=settings.checkpoint_every_steps,
        resume_from=resume,
        memory_budget_bytes=memory_budget,
        **asdict(hyperparameters),
    )


class JobAttempt:
    def __init__(self, settings: Settings, storage: ObjectStorage, job: Job, holder: str, workdir: Path) -> None:
        self.settings = settings
        self.storage = storage
        self.job = job
        self.holder = holder
        self.workdir = workdir

    def _owned(self, write: Callable[[Session, Job], None]) -> bool:
        """Run `write(session, job)` in one transaction if the lease is still ours."""
        with session_scope(self.settings.database_url) as session:
            job = lock(session, JOBS, self.job.id, self.holder)
            if job is None:
                return False
            write(session, job)
            return True

    def download_inputs(self) -> dict[str, Path]:
        wanted = {"train": self.job.training_file, "validation": self.job.validation_file}
        with session_scope(self.settings.database_url) as session:
            ids = [file_id for file_id in wanted.values() if file_id]
            rows = {f.id: f for f in session.scalars(select(File).where(File.id.in_(ids)))}
        paths = {}
        for role, file_id in wanted.items():
            if file_id is None:
                continue
            code = f"invalid_{'training' if role == 'train' else 'validation'}_file"
            if file_id not in rows:
                raise JobFailed(code, f"the {role} file {file_id} no longer exists")
            # Named by file id, so an engine error about a line points the client at the right upload.
            paths[role] = self.workdir / f"{file_id}.jsonl"
            try:
                self.storage.get_file(rows[file_id].storage_key, paths[role])
            except ObjectNotFound:
                raise JobFailed(code, f"the {role} file {file_id} has no stored content") from None
        return paths

    def fetch_latest_checkpoint(self) -> Path | None:
        with session_scope(self.settings.database_url) as session:
            latest = session.scalars(
                select(Checkpoint).where(Checkpoint.job_id == self.job.id).order_by(Checkpoint.step.desc())
            ).first()
        if latest is None:
            return None
        archive = self.workdir / "resume.tar.gz"
        self.storage.get_file(latest.storage_key, archive)
        folder = unpack(archive, self.workdir / "resume")
        self._owned(
            lambda s, j: record_event(
                s, j.id, "message", f"Resuming from checkpoint at step {latest.step}", data={"step": latest.step}
            )
        )
        return folder

    def publish(self, spec: TrainSpec, result: TrainResult, source: Path | str) -> None:
        """Upload the adapter (with the tokenizer of the base model at `source`), make the stability report
        and the result files, then point the job at them: a half-written adapter is never served, and a
        succeeded job has everything it promises."""
        name_base_model(result.adapter_dir, self.job.model)
        extras = [source / name for name in TOKENIZER_FILES if isinstance(source, Path) and (source / name).is_file()]
        extras = [path for path in extras if not (result.adapter_dir / path.name).exists()]
        key = adapter_key(self.job.id)
        self._upload(key, pack(result.adapter_dir, self.workdir / "adapter.tar.gz", extra_files=extras))
        if result.merged_dir is not None:
            self._upload(merged_key(self.job.id), pack(result.merged_dir, self.workdir / "merged.tar.gz"))
        stability = store_stability_report(storage=self.storage, job_id=self.job.id, spec=spec, result=result)
        results = store_results(job_id=self.job.id, result=result, workdir=self.workdir, upload=self._upload)

        def succeed(session: Session, job: Job) -> None:
            if job.cancel_requested:
                transition(session, job, JobStatus.CANCELLED, message="Job cancelled")
                return
            job.adapter_key = key
            job.metrics = result.metrics
            job.trained_tokens = result.trained_tokens
            job.current_step = result.steps
            job.fine_tuned_model = fine_tuned_model_id(job)
            session.add_all([file.row(job.owner) for file in results])
            job.result_files = [file.id for file in results]
            record_event(session, job.id, "metrics", "Training finished", data=result.metrics)
            record_event(session, job.id, "message", stability.message, data=stability.summary, level=stability.level)
            transition(session, job, JobStatus.SUCCEEDED, message="The job has successfully completed")

        self._owned(succeed)

    def _upload(self, key: str, archive: Path) -> None:
        # Waits out a storage outage like a checkpoint upload (the heartbeat keeps the lease meanwhile)
        # rather than throwing away the finished training; a longer one fails with storage_unavailable.
        put_file_retrying(self.storage, key, archive, retry_seconds=self.settings.storage_retry_seconds)

    def stopped(self, hooks: JobHooks, stop: TrainingStopped) -> None:
        if hooks.lease_lost:  # the job is someone else's now: touch nothing
            log.warning("job %s: lease lost at step %d; leaving the job to its new holder", self.job.id, stop.step)
        elif hooks.cancel_requested:
            self._owned(lambda s, j: transition(s, j, JobStatus.CANCELLED, message="Job cancelled"))
        elif self._owned(lambda s, j: _hand_back(s, j, stop.step)):
            send_committed(broker=queue, settings=self.settings, lifecycle=JOBS, row_id=self.job.id)

    def fail(self, error: Exception) -> None:
        failure = failure_body(error, generic="training_failed", scratch=self.workdir)
        message = f"Job failed: {failure['message']}"
        self._owned(lambda s, j: transition(s, j, JobStatus.FAILED, message=message, error=failure))


def _outgrew(grown: int, budget: int) -> InsufficientMemory:
    return InsufficientMemory(
        f"the worker's memory grew by {grown / GiB:.1f} GiB during training, past the {budget / GiB:.1f} GiB "
        f"it has for a job; the attempt was stopped before the host ran out of memory; {LOWER}"
    )


def _hand_back(session: Session, job: Job, step: int) -> None:
    job.attempts -= 1  # a graceful hand-back does not use up one of the job's attempts
    message = f"Worker shutting down; job handed back at step {step}"
    transition(session, job, JobStatus.QUEUED, message=message, data={"step": step})


def run_job(
    *, settings: Settings, job_id: str, shutdown: threading.Event | None = None, train: TrainFn = engine_train
) -> None:
    """Run one delivery of `mambaft.run_job`; a delivery for a job that is not queued does nothing."""
    holder = new_holder_id()
    with session_scope(settings.database_url) as session:
        job = claim(session, JOBS, job_id, holder, lease_seconds=settings.lease_seconds)
    if job is None:
        log.info("job %s is not queued; ignoring this delivery", job_id)
        return
    storage = storage_from_settings(settings)
    with (
        tempfile.TemporaryDirectory(prefix=f"mambaft-{job_id}-") as tmp,
        Heartbeat(settings, JOBS, job_id, holder) as heartbeat,
    ):
        attempt = JobAttempt(settings, storage, job, holder, Path(tmp))
        hooks = JobHooks(settings, storage, job_id, holder, heartbeat, shutdown or threading.Event())
        try:
            model = model_source(settings=settings, storage=storage, owner=job.owner, model_id=job.model)
            inputs = attempt.download_inputs()
            resume = attempt.fetch_latest_checkpoint()
            spec = build_spec(
                job,
                settings=settings,
                model=model,
                workdir=Path(tmp),
                inputs=inputs,
                resume=resume,
                memory_budget=settings.worker_memory_bytes,
            )
            # The watchdog guards the host's RAM: on a CPU worker that is the job's budget, the setting's or
            # the engine's default; on a GPU worker the setting counts GPU memory, so the RAM's default.
            on_cpu = pick_device(None).type == "cpu"
            host_budget = (settings.worker_memory_bytes if on_cpu else None) or device_budget(pick_device("cpu"))
            with (
                Trackers(job, settings=settings, note=hooks.on_message) as trackers,
                MemoryWatchdog(host_budget, lambda grown: attempt.fail(_outgrew(grown, host_budget))),
            ):
                result = train(spec, trackers.watching(hooks.as_train_hooks()))
                trackers.log_result(result)
            attempt.publish(spec, result, model)
        except TrainingStopped as stop:
            attempt.stopped(hooks, stop)
        except OperationalError:
            # The database failed, not the job (down, restarting, failing over). Recording a failure
            # would fail too, or succeed a moment later and fail a healthy job for good. The lease
            # runs out instead and the reaper retries the job from its last checkpoint.
            log.exception("job %s: database unavailable; leaving the job to the reaper", job_id)
        except Exception as error:
            log.exception("job %s failed", job_id)
            attempt.fail(error)
