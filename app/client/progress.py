"""Following a job as it runs: a live progress bar (step/total, loss, tokens/s, ETA) fed by the job's
event stream, with its other events printed above the bar; or, with `--json`, the events as JSON lines."""

import json
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from app.client.http import Client


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_fields(data: dict[str, Any]) -> dict[str, Any]:
    """The bar's numbers from a progress event's data."""
    return {
        "completed": data["step"],
        "total": data["total_steps"],
        "steps": f"{data['step']}/{data['total_steps']}",
        "loss": f"{data['loss']:.4f}",
        "speed": f"{data['tokens_per_second']:,.0f} tok/s",
        "eta": duration(data.get("eta_seconds")),
    }


def follow_job(client: Client, job_id: str, *, as_json: bool) -> dict[str, Any]:
    """Show the job's events until it is finished; returns the finished job."""
    if as_json:
        for event in client.job_events(job_id):
            print(json.dumps(event.data), flush=True)
    else:
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn(
                "step {task.fields[steps]}  loss {task.fields[loss]}  {task.fields[speed]}  ETA {task.fields[eta]}"
            ),
        )
        with Progress(*columns, console=Console()) as bar:
            task = bar.add_task(job_id, total=None, steps="-", loss="-", speed="", eta="-")
            for event in client.job_events(job_id):
                if event.data["type"] == "progress" and event.data["data"]:
                    bar.update(task, **progress_fields(event.data["data"]))
                else:
                    bar.console.print(event.data["message"], markup=False, highlight=False)
    return client.get(f"/fine_tuning/jobs/{job_id}")
