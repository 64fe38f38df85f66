"""A job's W&B run. One per job: its id is the job's, so a retried attempt resumes the same run.
W&B's own variables configure it (WANDB_API_KEY; WANDB_MODE=offline keeps runs on disk)."""

from typing import Any

from app.settings import Settings
from worker.trackers.run import Outcome, RunInfo


class WandbRun:
    def __init__(self, run: Any) -> None:
        self.run = run

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def finish(self, outcome: Outcome) -> None:
        self.run.finish(exit_code=0 if outcome == "finished" else 1)


def start_wandb(config: dict[str, Any], info: RunInfo, settings: Settings) -> WandbRun:
    import wandb

    assert settings.wandb_dir is not None  # filled in by Settings
    settings.wandb_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=config["project"],
        entity=config.get("entity"),
        name=config.get("name") or info.job_id,
        tags=config.get("tags"),
        id=info.job_id,
        resume="allow",
        dir=settings.wandb_dir,
        config=info.params,
        # One worker runs many jobs, one after another: each its own run, none capturing the worker's output.
        reinit="create_new",
        settings=wandb.Settings(console="off", save_code=False),
    )
    return WandbRun(run)
