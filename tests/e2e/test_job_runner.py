"""One job attempt on a worker (worker/job_runner.py) over a real database and real storage.

The real engine trains the tiny model where the behaviour depends on it (cancel, resume, bad input);
a stand-in `train` is used where only the runner's own handling is under test.
"""

import csv
import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from botocore.exceptions import EndpointConnectionError
from fastapi.testclient import TestClient
from safetensors.torch import load_file
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

import worker.job_runner
from app.archive import unpack
from app.db import now, session_scope
from app.files.models import File
from app.jobs.keys import adapter_key, checkpoint_key
from app.jobs.lifecycle import JobStatus
from app.jobs.models import Checkpoint, Job, JobEvent
from app.main import create_app
from app.settings import Settings
from app.storage import ObjectStorage, storage_from_settings
from worker.engine import trainer
from worker.engine.memory import GiB, host_available_bytes
from worker.engine.spec import LoraSpec, TrainHooks, TrainingStopped, TrainResult, TrainSpec
from worker.engine.trainer import train as engine_train
from worker.job_runner import run_job
from worker.reaper import reap

from .factories import adapter_logits_change, demo_slice, job_row, make_job, make_settings, store_file


def job_events(settings: Settings, job_id: str) -> list[JobEvent]:
    with session_scope(settings.database_url) as session:
        return list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def messages(settings: Settings, job_id: str) -> list[str]:
    return [event.message for event in job_events(settings, job_id)]


def fake_adapter(spec: TrainSpec) -> TrainResult:
    adapter = spec.output_dir / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    return TrainResult(adapter_dir=adapter, trained_tokens=10, steps=1, metrics={"train_loss": 1.0})


class WorkerDied(BaseException):
    """Stands in for the worker process dying (SIGKILL, OOM): nothing in the runner gets to react."""


def test_retry_after_lost_worker_resumes_from_checkpoint_and_publishes(
    settings: Settings, storage: ObjectStorage, broker: Any
) -> None:
    job_id = make_job(settings, storage)

    def die_after_first_checkpoint(spec: TrainSpec, hooks: TrainHooks) -> TrainResult:
        def on_checkpoint(folder: Path, step: int) -> None:
            hooks.on_checkpoint(folder, step)
            raise WorkerDied

        return engine_train(spec, dataclasses.replace(hooks, on_checkpoint=on_checkpoint))

    with pytest.raises(WorkerDied):
        run_job(settings=settings, job_id=job_id, train=die_after_first_checkpoint)
    assert job_row(settings, job_id).status == JobStatus.RUNNING  # orphaned, as after a real crash

    with session_scope(settings.database_url) as session:  # the dead worker's lease runs out
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=now() - 1))
    assert reap(settings=settings, broker=broker) == [job_id]
    assert broker.enqueued == [job_id]
    assert job_row(settings, job_id).status == JobStatus.QUEUED

    run_job(settings=settings, job_id=job_id)

    job = job_row(settings, job_id)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.attempts == 2
    events = job_events(settings, job_id)
    texts = [event.message for event in events]
    assert "Worker lost; requeued (attempt 2 of 3)" in texts
    resumed_at = texts.index("Resuming from checkpoint at step 2")
    # The retry's first step is step 3: it continued from the checkpoint instead of starting over.
    retry_steps = [e.data["step"] for e in events[resumed_at:] if e.type == "progress"]
    assert retry_steps[0] == 3 and retry_steps[-1] == job.total_steps
    assert job.fine_tuned_model == f"mamba-tiny:ft-:{job_id}"
    assert job.metrics["validation_loss"] > 0 and job.trained_tokens

    archive = settings.data_dir / "adapter.tar.gz"
    storage.get_file(job.adapter_key, archive)
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= names
    assert all(not name.startswith("/") and ".." not in name.split("/") for name in names)

    # The results span both attempts: the steps before the crash came back with the checkpoint.
    csv_file, png_file = result_files(settings, job)
    steps = list(csv.DictReader(io.StringIO(read_object(storage, csv_file).decode())))
    assert [int(row["step"]) for row in steps] == list(range(1, job.total_steps + 1))
    assert all(float(row["train_loss"]) > 0 and float(row["learning_rate"]) > 0 for row in steps)
    assert float(steps[-1]["valid_loss"]) == pytest.approx(job.metrics["validation_loss"])
    assert not any(row["valid_loss"] for row in steps[:-1])
    assert read_object(storage, png_file).startswith(b"\x89PNG\r\n\x1a\n")
    with session_scope(settings.database_url) as session:
        checkpoint = session.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id)).one()
    assert checkpoint.metrics["step"] == checkpoint.step == 2
    assert checkpoint.metrics["train_loss"] == pytest.approx(float(steps[1]["train_loss"]))


def result_files(settings: Settings, job: Job) -> list[File]:
    """The job's result files, in its `result_files` order, each checked to be the tenant's."""
    assert job.result_files is not None and len(job.result_files) == 2
    with session_scope(settings.database_url) as session:
        rows = {f.id: f for f in session.scalars(select(File).where(File.id.in_(job.result_files)))}
    files = [rows[file_id] for file_id in job.result_files]
    assert {(f.owner, f.purpose) for f in files} == {(job.owner, "fine-tune-results")}
    assert [f.filename for f in files] == [f"{job.id}-metrics.csv", f"{job.id}-loss_curve.png"]
    return files


def read_object(storage: ObjectStorage, file: File) -> bytes:
    return b"".join(storage.iter_bytes(file.storage_key))


def test_the_published_adapter_names_the_model_id_and_plain_peft_loads_it(
    settings: Settings, storage: ObjectStorage, tmp_path: Path
) -> None:
    job_id = make_job(settings, storage)

    run_job(settings=settings, job_id=job_id)

    archive = tmp_path / "adapter.tar.gz"
    storage.get_file(job_row(settings, job_id).adapter_key, archive)
    adapter = unpack(archive, tmp_path / "adapter")
    config = (adapter / "adapter_config.json").read_text()
    # The id a client knows the base by (and peft's AutoPeftModel loads it by), not the worker's folder.
    assert json.loads(config)["base_model_name_or_path"] == "mamba-tiny"
    assert not [path.name for path in adapter.glob("*.json") if str(settings.models_dir) in path.read_text()]
    assert settings.models_dir is not None
    assert adapter_logits_change(settings.models_dir, adapter) > 1e-4


def test_the_job_hyperparameters_reach_the_engine_memory_lean_mode_included(
    settings: Settings, storage: ObjectStorage
) -> None:
    hyperparameters = {
        "n_epochs": 2,
        "batch_size": 3,
        "learning_rate": 0.01,
        "max_seq_len": 48,
        "activation_recompute": True,
    }
    job_id = make_job(settings, storage, hyperparameters=hyperparameters)
    specs: list[TrainSpec] = []

    run_job(settings=settings, job_id=job_id, train=lambda spec, hooks: specs.append(spec) or fake_adapter(spec))

    assert job_row(settings, job_id).status == JobStatus.SUCCEEDED
    assert {name: getattr(specs[0], name) for name in hyperparameters} == hyperparameters


def test_cancel_of_running_job_stops_it_within_seconds(settings: Settings, storage: ObjectStorage) -> None:
    job_id = make_job(settings, storage, hyperparameters={"n_epochs": 50, "batch_size": 4, "max_seq_len": 64})
    runner = threading.Thread(target=run_job, kwargs={"settings": settings, "job_id": job_id})
    runner.start()
    deadline = time.monotonic() + 60
    while job_row(settings, job_id).current_step < 1:
        assert time.monotonic() < deadline, "training never started"
        time.sleep(0.2)

    with session_scope(settings.database_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    requested = time.monotonic()
    runner.join(timeout=30)

    assert not runner.is_alive()
    assert time.monotonic() - requested < 10
    job = job_row(settings, job_id)
    assert job.status == JobStatus.CANCELLED
    assert job.lease_owner is None and job.adapter_key is None and job.finished_at
    assert job.current_step < job.total_steps  # stopped early, not at the end
    assert "Job cancelled" in messages(settings, job_id)


def test_training_exception_fails_job_with_error_object(settings: Settings, storage: ObjectStorage) -> None:
    job_id = make_job(settings, storage)

    def explode(spec: TrainSpec, hooks: TrainHooks) -> TrainResult:
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    run_job(settings=settings, job_id=job_id, train=explode)

    job = job_row(settings, job_id)
    assert job.status == JobStatus.FAILED
    assert job.error == {"code": "training_failed", "message": "CUDA error: an illegal memory access was encountered"}
    assert job.lease_owner is None and job.finished_at
    final = job_events(settings, job_id)[-1]
    assert (final.type, final.level, final.data["to"]) == ("state", "error", "failed")


def test_database_error_mid_training_leaves_the_job_to_the_reaper_instead_of_failing_it(
    settings: Settings, storage: ObjectStorage, broker: Any
) -> None:
    job_id = make_job(settings, storage)

    def lose_the_database(spec: TrainSpec, hooks: TrainHooks) -> TrainResult:
        # As a progress write raises while Postgres restarts; the database is back when the runner reacts.
        raise OperationalError("UPDATE jobs", {}, Exception("server closed the connection unexpectedly"))

    run_job(settings=settings, job_id=job_id, train=lose_the_database)

    job = job_row(settings, job_id)
    assert (job.status, job.error) == (JobStatus.RUNNING, None)  # not failed: its lease will run out
    with session_scope(settings.database_url) as session:
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=now() - 1))
    reap(settings=settings, broker=broker)
    assert job_row(settings, job_id).status == JobStatus.QUEUED


def test_malformed_training_file_fails_with_invalid_training_file(settings: Settings, storage: ObjectStorage) -> None:
    good = b'{"prompt": "reverse: ab =", "completion": " ba"}\n'
    job_id = make_job(settings, storage, train_content=good + b"this is not json\n")

    run_job(settings=settings, job_id=job_id)

    job = job_row(settings, job_id)
    assert job.status == JobStatus.FAILED
    assert job.error["code"] == "invalid_training_file"
    # The message names the uploaded file and the line, not the worker's scratch folder.
    message = job.error["message"]
    assert message.startswith(f"{job.training_file}.jsonl") and "line 2" in message, message
    assert "mambaft-" not in message, message


def test_a_training_file_with_nothing_to_train_fails_before_the_first_step(
    settings: Settings, storage: ObjectStorage
) -> None:
    # Stored as the upload never would (it refuses empty completions): the worker's own check catches it.
    empty = b"".join(b'{"prompt": "reverse: %s =", "completion": ""}\n' % word for word in (b"ab", b"cd", b"ef"))
    job_id = make_job(settings, storage, train_content=empty)

    run_job(settings=settings, job_id=job_id)

    job = job_row(settings, job_id)
    assert (job.status, job.error["code"]) == (JobStatus.FAILED, "invalid_training_file"), job.error
    assert job.error["message"] == (
        f"{job.training_file}.jsonl: zero trainable tokens in its 3 example(s) at max_seq_len 64:"
        " no completion, text or assistant message has a token to train on"
    )
    assert job.current_step == 0 and not job.trained_tokens
    assert not [event for event in job_events(settings, job_id) if event.type == "progress"]


def test_unloadable_model_fails_with_model_load_failed(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "broken-tiny").mkdir(parents=True)
    (models / "broken-tiny" / "config.json").write_text(json.dumps({"model_type": "mamba"}))  # no weights
    settings = make_settings(tmp_path / "var", models_dir=models)
    job_id = make_job(settings, storage_from_settings(settings), model="broken-tiny")

    run_job(settings=settings, job_id=job_id)

    job = job_row(settings, job_id)
    assert job.status == JobStatus.FAILED
    assert job.error["code"] == "model_load_failed"


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_duplicate_delivery_of_a_job_is_a_no_op(
    database: str, request: pytest.FixtureRequest, tmp_path: Path, models_dir: Path
) -> None:
    overrides = {"database_url": request.getfixturevalue("postgres_url")} if database == "postgres" else {}
    settings = make_settings(tmp_path / "var", models_dir=models_dir, **overrides)
    job_id = make_job(settings, storage_from_settings(settings))
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow_train(spec: TrainSpec, hooks: TrainHooks) -> TrainResult:
        calls.append(spec.model)
        started.set()
        release.wait(30)
        return fake_adapter(spec)

    first = threading.Thread(target=run_job, kwargs={"settings": settings, "job_id": job_id, "train": slow_train})
    first.start()
    assert started.wait(30)
    run_job(settings=settings, job_id=job_id, train=slow_train)  # the duplicate, while the first runs
    release.set()
    first.join(30)
    run_job(settings=settings, job_id=job_id, train=slow_train)  # and one after the job finished

    job = job_row(settings, job_id)
    assert len(calls) == 1
    assert job.status == JobStatus.SUCCEEDED and job.attempts == 1
    assert sum(1 for event in job_events(settings, job_id) if event.type == "state") == 2  # running, succeeded


def test_graceful_shutdown_hands_the_job_back_to_the_queue(settings: Settings, storage: ObjectStorage) -> None:
    job_id = make_job(settings, storage)
    shutdown = threading.Event()

    def train_until_stopped(spec: TrainSpec, hooks: TrainHooks) -> TrainResult:
        shutdown.set()  # SIGTERM arrives mid-training
        while not hooks.should_stop():
            time.sleep(0.05)
        raise TrainingStopped(3, None)

    run_job(settings=settings, job_id=job_id, shutdown=shutdown, train=train_until_stopped)

    job = job_row(settings, job_id)
    assert job.status == JobStatus.QUEUED and job.lease_owner is None
    assert job.attempts == 0  # handing back is not a failed attempt
    assert "Worker shutting down; job handed back at step 3" in messages(settings, job_id)
    queued = list((settings.broker_folder / "queue").glob("*.msg"))
    assert len(queued) == 1 and job_id in queued[0].read_text()


def test_heartbeat_renews_the_lease_while_training(settings: Settings, storage: ObjectStorage) -> None:
    job_id = make_job(settings, storage)
    renewals: list[int] = []

    def train_while_watching_lease(spec: TrainSpec, hooks: TrainHooks) -> TrainResult:
        first = job_row(settings, job_id).lease_expires_at
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not renewals:
            time.sleep(0.2)
            if (current := job_row(settings, job_id).lease_expires_at) > first:
                renewals.append(current)
        return fake_adapter(spec)

    run_job(settings=settings, job_id=job_id, train=train_while_watching_lease)

    assert renewals, "the lease was never renewed"
    assert job_row(settings, job_id).status == JobStatus.SUCCEEDED


def test_worker_that_lost_its_lease_stops_and_leaves_the_job_to_its_new_owner(
    settings: Settings, storage: ObjectStorage
) -> None:
    job_id = make_job(settings, storage)

    def train_until_stopped(spec: TrainSpec, hooks: TrainHooks) -> TrainResult:
        # Meanwhile the reaper requeued the job and another worker claimed it.
        with session_scope(settings.database_url) as session:
            session.execute(update(Job).where(Job.id == job_id).values(lease_owner="another-worker"))
        deadline = time.monotonic() + 10
        while not hooks.should_stop():
            assert time.monotonic() < deadline, "should_stop never noticed the lost lease"
            time.sleep(0.05)
        raise TrainingStopped(1, None)

    run_job(settings=settings, job_id=job_id, train=train_until_stopped)

    job = job_row(settings, job_id)
    assert (job.status, job.lease_owner, job.error) == (JobStatus.RUNNING, "another-worker", None)


class AdapterUploadOutage:
    """The deployment's storage, except that the first `failures` adapter uploads find it unreachable."""

    def __init__(self, storage: ObjectStorage, job_id: str, failures: int) -> None:
        self.storage, self.key, self.failures = storage, adapter_key(job_id), failures

    def __getattr__(self, name: str) -> object:
        return getattr(self.storage, name)

    def put_file(self, key: str, path: Path) -> int:
        if key == self.key and self.failures > 0:
            self.failures -= 1
            raise EndpointConnectionError(endpoint_url="http://s3.invalid")
        return self.storage.put_file(key, path)


@pytest.mark.parametrize(("retry_seconds", "status"), [(10, JobStatus.SUCCEEDED), (0, JobStatus.FAILED)])
def test_the_adapter_upload_waits_out_a_storage_outage_up_to_the_retry_limit(
    settings: Settings, storage: ObjectStorage, monkeypatch: pytest.MonkeyPatch, retry_seconds: int, status: str
) -> None:
    job_id = make_job(settings, storage)
    outage = AdapterUploadOutage(storage, job_id, failures=1)  # one try fails, the next (after 1 s) would not
    monkeypatch.setattr(worker.job_runner, "storage_from_settings", lambda _: outage)

    patient = settings.model_copy(update={"storage_retry_seconds": retry_seconds})
    run_job(settings=patient, job_id=job_id, train=lambda spec, hooks: fake_adapter(spec))

    job = job_row(settings, job_id)
    assert job.status == status, job.error
    if status == JobStatus.FAILED:
        assert job.error is not None and job.error["code"] == "storage_unavailable"
        assert not storage.exists(adapter_key(job_id))  # nothing half-published
    else:
        assert job.adapter_key == adapter_key(job_id) and storage.exists(job.adapter_key)


# One step of this job on mamba-tiny keeps some 80 GiB of scan states: far beyond the test budgets.
HUGE_STEP = {"n_epochs": 1, "batch_size": 4, "learning_rate": 1e-3, "max_seq_len": 65536}


def long_text(tokens: int) -> bytes:
    """Text examples with at least `tokens` tokens of the byte tokenizer, so batches are full."""
    line = json.dumps({"text": "the old man carries the yellow ball. " * 25}).encode() + b"\n"
    return line * (tokens // 900 + 1)


def assert_refused_for_memory(settings: Settings, job_id: str) -> dict:
    job = job_row(settings, job_id)
    assert job.status == JobStatus.FAILED, job.error
    assert job.error["code"] == "insufficient_memory", job.error
    assert job.current_step == 0 and job.attempts == 1  # it never trained a step
    for field in (
        "hyperparameters.batch_size",
        "hyperparameters.max_seq_len",
        "precision bf16",
        "hyperparameters.activation_recompute",
    ):
        assert field in job.error["message"], job.error["message"]
    with session_scope(settings.database_url) as session:  # a lost lease would not retry it either
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=now() - 1))
    reap(settings=settings)
    assert job_row(settings, job_id).status == JobStatus.FAILED
    return job.error


def test_a_job_whose_step_exceeds_the_memory_budget_fails_at_once_and_a_smaller_one_trains(
    settings: Settings, storage: ObjectStorage
) -> None:
    budgeted = settings.model_copy(update={"worker_memory_bytes": 2 * 1024**3})
    huge = make_job(budgeted, storage, train_content=long_text(4 * 65536), hyperparameters=HUGE_STEP)
    small = make_job(budgeted, storage)

    started = time.monotonic()
    run_job(settings=budgeted, job_id=huge)
    assert time.monotonic() - started < 60

    error = assert_refused_for_memory(budgeted, huge)
    assert "batch_size 4 x max_seq_len 65536, fp32" in error["message"]
    assert "this worker has 2.0 GiB of RAM" in error["message"]
    run_job(settings=budgeted, job_id=small)
    assert job_row(budgeted, small).status == JobStatus.SUCCEEDED


def test_a_job_beyond_this_hosts_memory_fails_at_once_without_a_budget_setting(
    settings: Settings, storage: ObjectStorage
) -> None:
    if host_available_bytes() > 150 * GiB:
        pytest.skip("this host has room for the step")
    job_id = make_job(settings, storage, train_content=long_text(4 * 65536), hyperparameters=HUGE_STEP)

    run_job(settings=settings, job_id=job_id)

    assert_refused_for_memory(settings, job_id)


def test_running_out_of_memory_mid_training_fails_the_job_with_insufficient_memory(
    settings: Settings, storage: ObjectStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_loss, steps = trainer.next_token_loss, []

    def loss_then_out_of_memory(*args, **kwargs):
        steps.append(1)
        if len(steps) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(trainer, "next_token_loss", loss_then_out_of_memory)
    job_id = make_job(settings, storage)

    run_job(settings=settings, job_id=job_id)

    job = job_row(settings, job_id)
    assert job.status == JobStatus.FAILED and job.error["code"] == "insufficient_memory", job.error
    assert "Tried to allocate 20.00 GiB" in job.error["message"]
    assert "hyperparameters.batch_size" in job.error["message"]


HOG = """
import sys
from app.settings import Settings
from worker.job_runner import run_job

def hog(spec, hooks):
    # Stands in for a step that needs more than its estimate: memory grows until something stops it.
    held = []
    for _ in range(200):
        held.append(bytearray(16 * 1024**2))  # zero-filled: every page is touched
        __import__("time").sleep(0.01)
    raise SystemExit("the watchdog never fired")

run_job(settings=Settings(), job_id=sys.argv[1], train=hog)
"""


def test_a_worker_outgrowing_its_memory_budget_fails_the_job_itself_instead_of_being_oom_killed(
    settings: Settings, storage: ObjectStorage, broker: Any
) -> None:
    job_id = make_job(settings, storage)
    env = {
        **os.environ,
        "MAMBAFT_DATA_DIR": str(settings.data_dir),
        "MAMBAFT_MODELS_DIR": str(settings.models_dir),
        "MAMBAFT_WORKER_MEMORY_BYTES": str(512 * 1024**2),
    }

    worker = subprocess.run([sys.executable, "-c", HOG, job_id], env=env, capture_output=True, timeout=120, check=False)

    assert worker.returncode == -signal.SIGKILL, worker.stderr.decode()[-2000:]
    job = job_row(settings, job_id)
    assert job.status == JobStatus.FAILED, job.error
    assert job.error["code"] == "insufficient_memory"
    assert "past the 0.5 GiB it has for a job" in job.error["message"], job.error["message"]
    with session_scope(settings.database_url) as session:  # the reaper leaves it failed: no retry
        session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=now() - 1))
    assert reap(settings=settings, broker=broker) == []
    assert job_row(settings, job_id).status == JobStatus.FAILED and job_row(settings, job_id).attempts == 1


def test_a_diverging_job_fails_with_training_diverged_and_publishes_nothing(
    settings: Settings, storage: ObjectStorage
) -> None:
    # Full fine-tuning at learning rate 1 in fp16: after the first step every forward overflows (loss nan).
    job_id = make_job(
        settings,
        storage,
        owner="local",
        lora=None,
        precision="fp16",
        hyperparameters={"n_epochs": 2, "batch_size": 4, "learning_rate": 1.0, "max_seq_len": 64},
    )

    run_job(settings=settings, job_id=job_id)

    job = job_row(settings, job_id)
    assert job.status == JobStatus.FAILED and job.error["code"] == "training_diverged", job.error
    assert "not finite for 3 steps in a row" in job.error["message"]
    assert job.adapter_key is None and job.current_step < job.total_steps
    api = TestClient(create_app(settings.model_copy(update={"auth_disabled": True})))
    download = api.get(f"/v1/fine_tuning/jobs/{job_id}/adapter")
    assert (download.status_code, download.json()["error"]["code"]) == (409, "adapter_not_ready")
    checkpoints = api.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").json()["data"]
    assert checkpoints  # what the job learned before it diverged is kept, and it is finite
    archive = settings.data_dir / "checkpoint.tar.gz"
    for checkpoint in checkpoints:
        storage.get_file(checkpoint_key(job_id, checkpoint["step_number"]), archive)
        folder = unpack(archive, settings.data_dir / f"ckpt-{checkpoint['step_number']}")
        weights = load_file(str(folder / "trainable.safetensors"))
        assert all(bool(tensor.isfinite().all()) for tensor in weights.values())


@pytest.mark.parametrize(("model", "family"), [("mamba-tiny", "mamba"), ("mamba2-tiny", "mamba2")])
def test_a_job_created_without_settings_trains_with_the_engines_defaults_for_its_family(
    settings: Settings, storage: ObjectStorage, make_client: Callable[..., TestClient], model: str, family: str
) -> None:
    training = store_file(settings, storage, demo_slice("train.jsonl", 8), filename="train.jsonl")
    created = make_client("tester").post("/v1/fine_tuning/jobs", json={"model": model, "training_file": training})
    assert created.status_code == 200, created.text
    job = created.json()
    specs: list[TrainSpec] = []

    run_job(settings=settings, job_id=job["id"], train=lambda spec, hooks: specs.append(spec) or fake_adapter(spec))

    # One set of defaults: what the API answered is what the engine ran, and both are the engine's own.
    lora = specs[0].lora
    assert lora == LoraSpec.for_family(family)
    assert job["lora"] == {**dataclasses.asdict(lora), "target_modules": list(lora.target_modules)}
    engine_default = TrainSpec(model=model, train_path=Path(), output_dir=Path())
    for spec in (specs[0], engine_default):
        assert {name: getattr(spec, name) for name in job["hyperparameters"]} == job["hyperparameters"]


def test_a_job_stored_by_an_earlier_version_runs_with_the_defaults_for_what_it_lacks(
    settings: Settings, storage: ObjectStorage
) -> None:
    job_id = make_job(
        settings,
        storage,
        lora={"r": 4, "alpha": 8, "dropout": None, "target_modules": ["in_proj"], "retired_setting": 1},
        hyperparameters={"n_epochs": 2, "batch_size": None, "max_seq_len": 64},
    )
    specs: list[TrainSpec] = []

    run_job(settings=settings, job_id=job_id, train=lambda spec, hooks: specs.append(spec) or fake_adapter(spec))

    assert job_row(settings, job_id).status == JobStatus.SUCCEEDED
    assert specs[0].lora == LoraSpec(r=4, alpha=8, target_modules=("in_proj",))
    assert (specs[0].n_epochs, specs[0].batch_size, specs[0].max_seq_len) == (2, 4, 64)
    assert (specs[0].learning_rate, specs[0].activation_recompute) == (1e-3, False)
