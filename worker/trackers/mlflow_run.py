"""A job's MLflow run, on the server's tracking server (or the job's, where the server allows it). The
run is tagged with the job id, so a retried attempt carries on logging into the same run."""

import time
from typing import Any

from app.settings import Settings
from worker.trackers.run import Outcome, RunInfo

JOB_TAG = "mambaft.job_id"
# Metrics are sent in batches, at most this often, so a remote tracking server does not slow each step.
FLUSH_S = 2.0
MAX_BATCH = 1000  # MLflow's limit of metrics in one log_batch
STATUS = {"finished": "FINISHED", "failed": "FAILED", "stopped": "KILLED"}


class MlflowRun:
    def __init__(self, client: Any, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.pending: list[Any] = []
        self.flushed_at = time.monotonic()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        self.pending += [Metric(name, value, stamp, step) for name, value in metrics.items()]
        if time.monotonic() - self.flushed_at >= FLUSH_S or len(self.pending) >= MAX_BATCH // 2:
            self._flush()

    def _flush(self) -> None:
        while self.pending:
            batch, self.pending = self.pending[:MAX_BATCH], self.pending[MAX_BATCH:]
            self.client.log_batch(self.run_id, metrics=batch)
        self.flushed_at = time.monotonic()

    def finish(self, outcome: Outcome) -> None:
        self._flush()
        self.client.set_terminated(self.run_id, status=STATUS[outcome])


def _experiment_id(client: Any, name: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # another worker created it meanwhile
        return client.get_experiment_by_name(name).experiment_id


def start_mlflow(config: dict[str, Any], info: RunInfo, settings: Settings) -> MlflowRun:
    from mlflow import MlflowClient
    from mlflow.entities import Param

    client = MlflowClient(tracking_uri=config.get("tracking_uri") or settings.mlflow_tracking_uri)
    experiment_id = _experiment_id(client, config["experiment_name"])
    earlier = client.search_runs([experiment_id], filter_string=f"tags.`{JOB_TAG}` = '{info.job_id}'", max_results=1)
    if earlier:
        run_id = earlier[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return MlflowRun(client, run_id)
    run = client.create_run(experiment_id, run_name=config.get("run_name") or info.job_id, tags={JOB_TAG: info.job_id})
    client.log_batch(run.info.run_id, params=[Param(name, str(value)) for name, value in info.params.items()])
    return MlflowRun(client, run.info.run_id)
