"""A trained job's result files, as OpenAI's: the per-step metrics CSV and a loss-curve PNG, stored as files
of purpose fine-tune-results owned by the job's tenant (the job lists them in `result_files`)."""

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on workers
import matplotlib.pyplot as plt

from app.db import new_id, now
from app.files.models import FINE_TUNE_RESULTS, File
from app.jobs.keys import result_key
from worker.engine.spec import TrainResult

COLUMNS = ("step", "train_loss", "valid_loss", "learning_rate", "tokens_per_second", "peak_memory_bytes")


@dataclass(frozen=True)
class ResultFile:
    """A result file, uploaded; its row is added with the job's success."""

    id: str
    filename: str
    storage_key: str
    format: str
    bytes: int
    line_count: int

    def row(self, owner: str) -> File:
        return File(
            id=self.id,
            owner=owner,
            filename=self.filename,
            purpose=FINE_TUNE_RESULTS,
            bytes=self.bytes,
            created_at=now(),
            storage_key=self.storage_key,
            format=self.format,
            line_count=self.line_count,
        )


def write_metrics_csv(result: TrainResult, path: Path) -> int:
    """One row per step; the validation loss, measured once training ended, on the last row. Returns rows."""
    rows = [dict(row) for row in result.history]
    if rows and "validation_loss" in result.metrics:
        rows[-1]["valid_loss"] = result.metrics["validation_loss"]
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def plot_loss_curve(result: TrainResult, path: Path) -> Path:
    """Training loss per step, the final validation loss, and the base model's validation loss as a line."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.plot([r["step"] for r in result.history], [r["train_loss"] for r in result.history], label="train", lw=1)
    if "validation_loss" in result.metrics:
        ax.plot([result.steps], [result.metrics["validation_loss"]], "o", label="validation")
    if "base_validation_loss" in result.metrics:
        ax.axhline(result.metrics["base_validation_loss"], color="gray", ls="--", label="base model, validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return path


def store_results(
    *, job_id: str, result: TrainResult, workdir: Path, upload: Callable[[str, Path], Any]
) -> list[ResultFile]:
    """Write the job's result files into `workdir` and `upload(key, path)` each; returns them, CSV first."""
    csv_path = workdir / "metrics.csv"
    lines = write_metrics_csv(result, csv_path) + 1  # and the header
    made = [(csv_path, "csv", lines), (plot_loss_curve(result, workdir / "loss_curve.png"), "png", 0)]
    files = []
    for path, kind, line_count in made:
        key = result_key(job_id, path.name)
        upload(key, path)
        files.append(ResultFile(new_id("file"), f"{job_id}-{path.name}", key, kind, path.stat().st_size, line_count))
    return files
