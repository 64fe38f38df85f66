"""`mambaft files ...`, `mambaft models ...` and `mambaft eval`: the client commands beside the jobs'."""

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from app.client.http import Client
from app.client.options import DEFAULT_URL, ApiKey, Json, Url, connect, emit

files = typer.Typer(help="Training, validation and result files.", no_args_is_help=True)
models = typer.Typer(help="Base models: list them, create new ones from an architecture.", no_args_is_help=True)

POLL_S = 1.0
Wait = Annotated[bool, typer.Option("--wait", help="Wait until it is finished.")]


def wait_until(client: Client, path: str, finished: set[str]) -> dict[str, Any]:
    """GET `path` every POLL_S seconds until its status is one of `finished`."""
    while (found := client.get(path))["status"] not in finished:
        time.sleep(POLL_S)
    return found


@files.command()
def upload(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A JSONL file.")],
    purpose: Annotated[str, typer.Option(help="What the file is for.")] = "fine-tune",
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    as_json: Json = False,
) -> None:
    """Upload a JSONL file (it is checked line by line as it streams in); prints its id."""
    with connect(url, api_key, as_json) as client:
        file = client.upload(path, purpose)
    emit(as_json, file, file["id"])


@files.command("list")
def list_files(
    purpose: Annotated[str | None, typer.Option(help="Only files of this purpose.")] = None,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    as_json: Json = False,
) -> None:
    """List your files, newest first."""
    with connect(url, api_key, as_json) as client:
        page = client.get("/files", purpose=purpose, limit=100)
    lines = [f"{f['id']}  {f['purpose']:<17} {f['bytes']:>10}  {f['filename']}" for f in page["data"]]
    emit(as_json, page, "\n".join(lines) or "No files yet")


@files.command()
def download(
    file_id: Annotated[str, typer.Argument(help="A file's id.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write it.")],
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    as_json: Json = False,
) -> None:
    """Download a file's content."""
    with connect(url, api_key, as_json) as client:
        client.download(f"/files/{file_id}/content", output)
    emit(as_json, {"id": file_id, "path": str(output.resolve())}, str(output))


@models.command("list")
def list_models(url: Url = DEFAULT_URL, api_key: ApiKey = None, as_json: Json = False) -> None:
    """List the base models you can fine-tune."""
    with connect(url, api_key, as_json) as client:
        page = client.get("/models")
    lines = [f"{m['id']}  {m['status']:<8} {m['family'] or '?':<7} {m['parameters'] or '?'}" for m in page["data"]]
    emit(as_json, page, "\n".join(lines))


@models.command("create")
def create_model(
    model_id: Annotated[str, typer.Argument(help="The new model's id.")],
    family: Annotated[str, typer.Option(help="mamba or mamba2.")],
    d_model: Annotated[int, typer.Option()],
    n_layer: Annotated[int, typer.Option()],
    d_state: Annotated[int, typer.Option()],
    ssm_structure: Annotated[str | None, typer.Option(help="Mamba: diagonal, controllable or observable.")] = None,
    a_constraint: Annotated[str | None, typer.Option(help="Mamba-2: none or stable.")] = None,
    tokenizer: Annotated[str | None, typer.Option(help="byte, or a ready model whose tokenizer to copy.")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    wait: Wait = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    as_json: Json = False,
) -> None:
    """Create a randomly initialized base model from an architecture; with --wait, until it is built."""
    body = {"id": model_id, "family": family, "d_model": d_model, "n_layer": n_layer, "d_state": d_state}
    optional = {"ssm_structure": ssm_structure, "a_constraint": a_constraint, "tokenizer": tokenizer, "seed": seed}
    with connect(url, api_key, as_json) as client:
        model = client.post("/models", body | {k: v for k, v in optional.items() if v is not None})
        if wait:
            model = wait_until(client, f"/models/{model_id}", {"ready", "failed"})
    emit(as_json, model, f"Model {model['id']}: {model['status']}" + (f" ({model['error']})" if model["error"] else ""))
    if model["status"] == "failed":
        raise typer.Exit(1)


def evaluate(
    job: Annotated[str | None, typer.Option("--job", help="A succeeded fine-tuning job (base + adapter).")] = None,
    model: Annotated[str | None, typer.Option(help="A base model, instead of --job.")] = None,
    task: Annotated[list[str] | None, typer.Option(help="A multiple-choice task; repeat for more.")] = None,
    shots: Annotated[list[int] | None, typer.Option(help="Few-shot counts; repeat for more.")] = None,
    validation_file: Annotated[str | None, typer.Option(help="A file id: loss and perplexity on it.")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32, fp16 or bf16.")] = None,
    limit: Annotated[int | None, typer.Option(help="Examples scored per task.")] = None,
    wait: Wait = False,
    url: Url = DEFAULT_URL,
    api_key: ApiKey = None,
    as_json: Json = False,
) -> None:
    """Evaluate a job's adapter or a base model (multiple-choice tasks, ICL gain, perplexity)."""
    body = {
        "fine_tuning_job": job,
        "model": model,
        "tasks": task,
        "shots": shots,
        "validation_file": validation_file,
        "precision": precision,
        "limit": limit,
    }
    with connect(url, api_key, as_json) as client:
        evaluation = client.post("/evaluations", {k: v for k, v in body.items() if v is not None})
        if wait:
            evaluation = wait_until(client, f"/evaluations/{evaluation['id']}", {"succeeded", "failed"})
    details = evaluation["results"] or evaluation["error"]
    text = f"Evaluation {evaluation['id']}: {evaluation['status']}"
    emit(as_json, evaluation, text + (f"\n{json.dumps(details, indent=2)}" if details else ""))
    if evaluation["status"] == "failed":
        raise typer.Exit(1)
