"""`mambaft jobs ...`: create (and follow) fine-tuning jobs, read their logs, cancel them, download results."""

import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from app.archive import unpack  # standard library only: the client unpacks what the workers packed
from app.client.http import Client
from app.client.options import DEFAULT_URL, ApiKey, Json, Url, connect, emit
from app.client.progress import follow_job

jobs = typer.Typer(help="Fine-tuning jobs: create, follow, cancel, download.", no_args_is_help=True)

JobId = Annotated[str, typer.Argument(help="A fine-tuning job's id (ftjob-...).")]
Output = Annotated[Path | None, typer.Option("--output", "-o", help="The folder to write into.")]


def file_id(client: Client, value: str) -> str:
    """A file id as given, or the id of the local JSONL file at `value`, uploaded first."""
    path = Path(value)
    return client.upload(path, "fine-tune")["id"] if path.is_file() else value


def job_line(job: dict[str, Any]) -> str:
    progress = job["progress"]
    steps = f"step {progress['step']}/{progress['total_steps']}" if progress["total_steps"] else ""
    return "  ".join(filter(None, [job["id"], job["status"], job["model"], steps, job["fine_tuned_model"]]))


def outcome(job: dict[str, Any]) -> str:
    """What a finished job came to, in words."""
    if job["status"] != "succeeded":
        error = job["error"] or {}
        return f"Job {job['id']} {job['status']}" + (f": {error.get('code')}: {error.get('message')}" if error else "")
    metrics = job["metrics"]
    losses = ", ".join(
        f"{name} {metrics[name]:.4f}"
        for name in ("train_loss", "validation_loss", "base_validation_loss")
        if isinstance(metrics.get(name), float)
    )
    return f"Job {job['id']} succeeded: {job['fine_tuned_model']} ({losses})"


def finish(job: dict[str, Any], as_json: bool) -> None:
    """Print the finished job; a job that did not succeed ends the command with exit status 1."""
    emit(as_json, job, outcome(job))
    if job["status"] != "succeeded":
        raise typer.Exit(1)


@jobs.command()
def create(
    model: Annotated[str, typer.Option(help="The base model's id (`mambaft models list`).")],
    training_file: Annotated[str, typer.Option(help="A file id, or a local JSONL file to upload.")],
    validation_file: Annotated[str | None, typer.Option(help="A file id, or a local JSONL file.")] = None,
    suffix: Annotated[str | None, typer.Option(help="Part of the fine-tuned model's name.")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32, fp16 or bf16 (server default: bf16).")] = None,
    n_epochs: Annotated[int | None, typer.Option(help="Passes over the training file.")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    learning_rate: Annotated[float | None, typer.Option()] = None,
    max_seq_len: Annotated[int | None, typer.Option()] = None,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank.")] = None,
    lora_alpha: Annotated[float | None, typer.Option()] = None,
    target_module: Annotated[list[str] | None, typer.Option(help="A module LoRA adapts; repeat for more.")] = None,
    full: Annotated[bool, typer.Option("--full", help="Full fine-tuning instead of LoRA.")] = False,
    seed: Annotated[int | None, typer.Option()] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job with a progress bar until it ends.")] = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    as_json: Json = False,
) -> None:
    """Create a fine-tuning job (uploading local files first); with --wait, follow it to the end."""
    hyperparameters = {"n_epochs": n_epochs, "batch_size": batch_size, "learning_rate": learning_rate}
    hyperparameters |= {"max_seq_len": max_seq_len}
    lora = {"r": lora_r, "alpha": lora_alpha, "target_modules": target_module or None}
    with connect(url, api_key, as_json) as client:
        body = {
            "model": model,
            "training_file": file_id(client, training_file),
            "validation_file": validation_file and file_id(client, validation_file),
            "suffix": suffix,
            "precision": precision,
            "seed": seed,
            "hyperparameters": {k: v for k, v in hyperparameters.items() if v is not None},
        }
        body = {k: v for k, v in body.items() if v is not None}
        body["lora"] = None if full else {k: v for k, v in lora.items() if v is not None}
        job = client.post("/fine_tuning/jobs", body)
        if not wait:
            emit(as_json, job, f"Created job {job['id']} ({job['status']})")
            return
        if not as_json:
            emit(False, job, f"Created job {job['id']}; following it (Ctrl-C stops following, not the job)")
        finish(follow_job(client, job["id"], as_json=as_json), as_json)


@jobs.command("list")
def list_jobs(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    as_json: Json = False,
) -> None:
    """List your fine-tuning jobs, newest first."""
    with connect(url, api_key, as_json) as client:
        page = client.get("/fine_tuning/jobs", limit=limit)
    emit(as_json, page, "\n".join(job_line(job) for job in page["data"]) or "No jobs yet")


@jobs.command()
def get(job_id: JobId, url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: Json = False) -> None:
    """Show one job."""
    with connect(url, api_key, as_json) as client:
        job = client.get(f"/fine_tuning/jobs/{job_id}")
    emit(as_json, job, job_line(job) if job["status"] not in ("succeeded", "failed") else outcome(job))


def event_line(event: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(event["created_at"], UTC).strftime("%H:%M:%S")
    return f"{when} {event['level']:<7} {event['message']}"


@jobs.command()
def logs(
    job_id: JobId,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing events until the job ends.")] = False,
    limit: Annotated[int, typer.Option(help="Without --follow: the last this many events.")] = 100,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    as_json: Json = False,
) -> None:
    """Print a job's events, oldest first; with --follow, as they happen until the job ends."""
    with connect(url, api_key, as_json) as client:
        if not follow:
            events = client.get(f"/fine_tuning/jobs/{job_id}/events", limit=limit)["data"][::-1]
            for event in events:
                emit(as_json, event, event_line(event))
            return
        for event in client.job_events(job_id):
            emit(as_json, event.data, event_line(event.data))


@jobs.command()
def cancel(job_id: JobId, url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: Json = False) -> None:
    """Cancel a job (a running one stops at its next step)."""
    with connect(url, api_key, as_json) as client:
        job = client.post(f"/fine_tuning/jobs/{job_id}/cancel")
    emit(as_json, job, f"Job {job['id']}: {job['status']}")


@jobs.command()
def download(
    job_id: JobId,
    output: Output = None,
    merged: Annotated[bool, typer.Option("--merged", help="The merged model (lora.export_merged) instead.")] = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    as_json: Json = False,
) -> None:
    """Download a succeeded job's adapter, unpacked: a folder `PeftModel.from_pretrained` loads."""
    what = "merged" if merged else "adapter"
    folder = output or Path(f"{job_id}-{what}")
    with connect(url, api_key, as_json) as client, tempfile.TemporaryDirectory(prefix="mambaft-") as tmp:
        archive = client.download(f"/fine_tuning/jobs/{job_id}/{what}", Path(tmp) / f"{what}.tar.gz")
        unpack(archive, folder)
    emit(as_json, {"job": job_id, "path": str(folder.resolve())}, f"Unpacked the {what} of {job_id} into {folder}")


@jobs.command()
def results(
    job_id: JobId, output: Output = None, url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: Json = False
) -> None:
    """Download a succeeded job's result files: the per-step metrics CSV and the loss curve."""
    folder = output or Path(".")
    folder.mkdir(parents=True, exist_ok=True)
    with connect(url, api_key, as_json) as client:
        paths = []
        for result_id in client.get(f"/fine_tuning/jobs/{job_id}")["result_files"]:
            name = Path(client.get(f"/files/{result_id}")["filename"]).name
            paths.append(client.download(f"/files/{result_id}/content", folder / name))
    emit(as_json, {"job": job_id, "paths": [str(p.resolve()) for p in paths]}, "\n".join(map(str, paths)))
