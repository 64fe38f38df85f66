"""A job's `integrations`, end to end: `mambaft serve` trains a job that asked for W&B (offline mode, its
run folder read back) and MLflow (a local file store, its run read back through MLflow's client); and a
tracker that is missing or cannot start costs the job nothing.

The first test is slow (a `mambaft serve` start and a 3-step job with its stability report, as
test_service_e2e's embedded run): the trackers are only worth testing inside the real worker process.
"""

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mlflow import MlflowClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from app.db import session_scope
from app.jobs.lifecycle import JobStatus
from app.jobs.models import JobEvent
from app.settings import Settings
from app.storage import ObjectStorage
from worker.engine.spec import Progress, TrainHooks, TrainResult, TrainSpec
from worker.job_runner import run_job

from . import wandb_log
from .factories import clean_env, demo_slice, free_port, job_row, make_job
from .service import Service

WANDB = {"type": "wandb", "wandb": {"project": "mamba-runs", "name": "tiny-lora", "tags": ["e2e"]}}
MLFLOW = {"type": "mlflow", "mlflow": {"experiment_name": "mamba-e2e"}}


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[Service]:
    """`mambaft serve` whose MLflow runs go to a file store and whose W&B runs stay on disk."""
    settings = Settings(data_dir=tmp_path / "var", mlflow_tracking_uri=(tmp_path / "mlruns").as_uri())
    assert settings.models_dir is not None
    service = Service(url=f"http://127.0.0.1:{free_port()}", models_dir=settings.models_dir, settings=settings, logs=[])
    env = clean_env(
        MAMBAFT_MLFLOW_TRACKING_URI=settings.mlflow_tracking_uri,
        # MLflow 3 refuses its file store unless asked; it is the lightest store to read back.
        MLFLOW_ALLOW_FILE_STORE="true",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
    )
    port = service.url.rsplit(":", 1)[1]
    service.start(["serve", "--host", "127.0.0.1", "--port", port, "--data-dir", str(settings.data_dir)], env, tmp_path)
    yield service
    service.stop()


def test_a_job_logs_its_hyperparameters_and_every_step_to_wandb_and_mlflow(
    embedded: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    embedded.wait_ready()
    with httpx.Client(base_url=embedded.url, timeout=30) as client:
        upload = client.post(
            "/v1/files",
            files={"file": ("train.jsonl", demo_slice("train.jsonl", 32))},
            data={"purpose": "fine-tune"},
        )
        body = {
            "model": "mamba-tiny",
            "training_file": upload.raise_for_status().json()["id"],
            "precision": "fp32",
            "lora": {"r": 4, "alpha": 8, "target_modules": ["in_proj", "x_proj"]},
            "hyperparameters": {"n_epochs": 1, "batch_size": 4, "max_seq_len": 64, "learning_rate": 3e-3},
            "integrations": [WANDB, MLFLOW],
        }
        created = client.post("/v1/fine_tuning/jobs", json=body)
        assert created.status_code == 200, created.text
        job = embedded.wait_terminal(client, created.json()["id"])
        scrape = client.get("/metrics")
    assert job["status"] == "succeeded", f"{job['error']}\n{embedded.log_tail()}"
    steps = job["progress"]["total_steps"]
    assert steps >= 2

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # this process reads the store back too
    mlflow = MlflowClient(tracking_uri=embedded.settings.mlflow_tracking_uri)
    experiment = mlflow.get_experiment_by_name("mamba-e2e")
    assert experiment is not None
    [run] = mlflow.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == job["id"]
    assert run.data.tags["mambaft.job_id"] == job["id"]
    assert {"n_epochs": "1", "batch_size": "4", "lora.r": "4", "model": "mamba-tiny"}.items() <= run.data.params.items()
    losses = mlflow.get_metric_history(run.info.run_id, "loss")
    assert [metric.step for metric in losses] == list(range(1, steps + 1))
    assert run.data.metrics["train_loss"] == pytest.approx(job["metrics"]["train_loss"])
    assert run.data.metrics["tokens_per_second"] > 0

    assert embedded.settings.wandb_dir is not None
    [log] = embedded.settings.wandb_dir.glob(f"wandb/offline-run-*-{job['id']}/run-{job['id']}.wandb")
    record = wandb_log.run_record(log)
    assert (record.project, record.display_name, list(record.tags)) == ("mamba-runs", "tiny-lora", ["e2e"])
    config = {item.key: item.value_json for item in record.config.update}
    assert (config["lora.r"], config["n_epochs"]) == ("4", "1")
    history = wandb_log.history(log)
    assert sorted(history) == list(range(1, steps + 1))
    assert all(history[step]["loss"] > 0 and history[step]["learning_rate"] > 0 for step in range(1, steps))
    assert all(history[step]["steps_per_second"] > 0 for step in range(1, steps + 1))
    assert history[steps]["train_loss"] == pytest.approx(job["metrics"]["train_loss"])
    assert wandb_log.exit_code(log) == 0

    # The same service's scrape counts the job and the worker that ran it.
    assert scrape.status_code == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(scrape.text)
        for s in f.samples
    }
    assert samples[("mambaft_jobs", (("state", "succeeded"),))] == 1
    assert samples[("mambaft_workers_alive", ())] == 1


def _messages(settings: Settings, job_id: str) -> list[str]:
    with session_scope(settings.database_url) as session:
        return list(session.scalars(select(JobEvent.message).where(JobEvent.job_id == job_id).order_by(JobEvent.id)))


def test_a_tracker_that_is_missing_or_cannot_start_is_skipped_and_the_job_trains(
    settings: Settings, storage: ObjectStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # as on a worker without the package
    broken_store = {"type": "mlflow", "mlflow": {"experiment_name": "e", "tracking_uri": "nosuchstore://x"}}
    job_id = make_job(settings, storage, train_lines=8, integrations=[WANDB, broken_store])
    trained: list[int] = []

    def train(spec: TrainSpec, hooks: TrainHooks) -> TrainResult:
        hooks.on_progress(Progress(1, 1, 0, 2.0, 1e-3, tokens_per_second=10.0, eta_seconds=0, trained_tokens=64))
        trained.append(1)
        adapter = spec.output_dir / "adapter"
        adapter.mkdir(parents=True)
        return TrainResult(adapter_dir=adapter, trained_tokens=64, steps=1, metrics={"train_loss": 2.0})

    run_job(settings=settings, job_id=job_id, train=train)

    job = job_row(settings, job_id)
    assert job.status == JobStatus.SUCCEEDED, job.error
    assert trained == [1] and job.current_step == 1
    messages = _messages(settings, job_id)
    assert "The wandb integration was skipped: the wandb package is not installed on this worker" in messages
    assert any(m.startswith("The mlflow integration was skipped: its run could not start (") for m in messages)
    assert not any("nosuchstore" in message for message in messages)  # a URI can carry credentials
