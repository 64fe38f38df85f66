"""The trackers of one job attempt: opened before training, told every step, closed with the attempt's
outcome. A tracker never costs the job anything: one whose package is missing, whose run cannot start
or whose logging fails is dropped, and an event on the job says so."""

import logging
from collections.abc import Callable
from dataclasses import replace
from types import TracebackType
from typing import Any

from app.jobs.models import Job
from app.settings import Settings
from worker.engine.spec import Progress, TrainHooks, TrainingStopped, TrainResult
from worker.trackers.mlflow_run import start_mlflow
from worker.trackers.run import Outcome, RunInfo, TrackerRun
from worker.trackers.wandb_run import start_wandb

log = logging.getLogger(__name__)

Note = Callable[[str], None]
Starter = Callable[[dict[str, Any], RunInfo, Settings], TrackerRun]
# An integration's type -> how its run starts, and the package that must be installed for it.
STARTERS: dict[str, tuple[Starter, str]] = {"wandb": (start_wandb, "wandb"), "mlflow": (start_mlflow, "mlflow")}


def run_info(job: Job) -> RunInfo:
    """What every tracker records about the job: its id and its settings, flat ("lora.r")."""
    params: dict[str, Any] = {"model": job.model, "precision": job.precision, "seed": job.seed}
    params |= job.hyperparameters
    params |= {f"lora.{name}": value for name, value in (job.lora or {}).items()}
    params["full_fine_tuning"] = job.lora is None
    return RunInfo(job_id=job.id, params=params)


def step_metrics(progress: Progress) -> dict[str, float]:
    figures = {
        "loss": progress.loss,
        "learning_rate": progress.learning_rate,
        "epoch": progress.epoch,
        "trained_tokens": progress.trained_tokens,
        "tokens_per_second": progress.tokens_per_second,
        "steps_per_second": progress.steps_per_second,
        "skipped_steps": progress.skipped_steps,
        "peak_memory_bytes": progress.peak_memory_bytes,
    }
    return {name: float(value) for name, value in figures.items() if value is not None}


class Trackers:
    def __init__(self, job: Job, *, settings: Settings, note: Note) -> None:
        self.note = note
        self.runs: dict[str, TrackerRun] = {}
        info = run_info(job)
        for integration in job.integrations or []:
            kind = integration["type"]
            start, package = STARTERS[kind]
            try:
                self.runs[kind] = start(integration[kind], info, settings)
            except Exception as error:
                if isinstance(error, ImportError) and (error.name or "").split(".")[0] == package:
                    note(f"The {kind} integration was skipped: the {package} package is not installed on this worker")
                    continue
                # The type only: a message can carry the tracking server's URL, credentials included.
                log.exception("job %s: could not start its %s run", job.id, kind)
                note(f"The {kind} integration was skipped: its run could not start ({type(error).__name__})")

    def watching(self, hooks: TrainHooks) -> TrainHooks:
        """`hooks`, with every step's progress told to the trackers too (the job's own throttles its events)."""

        def on_progress(progress: Progress) -> None:
            self._each(lambda run: run.log(progress.step, step_metrics(progress)))
            hooks.on_progress(progress)

        return replace(hooks, on_progress=on_progress)

    def log_result(self, result: TrainResult) -> None:
        """The run's final figures (validation loss and the like), at its last step."""
        final = {name: float(value) for name, value in result.metrics.items() if isinstance(value, int | float)}
        self._each(lambda run: run.log(result.steps, final))

    def _each(self, action: Callable[[TrackerRun], None]) -> None:
        for kind, run in list(self.runs.items()):
            try:
                action(run)
            except Exception as error:
                log.exception("%s tracker failed", kind)
                del self.runs[kind]
                self.note(f"The {kind} integration stopped logging: it failed ({type(error).__name__})")

    def __enter__(self) -> "Trackers":
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        outcome: Outcome = (
            "finished" if error is None else "stopped" if isinstance(error, TrainingStopped) else "failed"
        )
        self._each(lambda run: run.finish(outcome))
