"""The `mambaft` client commands as a user runs them: subprocesses against one running `mambaft serve` with
an API key, one tiny job trained with `jobs create --wait` in a pseudo-terminal and read back by the others."""

import csv
import json
import os
import pty
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .factories import MAMBAFT, adapter_logits_change, clean_env, demo_slice
from .service import Service, serve_with_key

TIMEOUT_S = 180
# Cursor movement and colours of the live display, removed before reading what it drew.
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Service]:
    """`mambaft serve` over a fresh data dir holding one key (so authentication is on), up with its worker."""
    service = serve_with_key(tmp_path_factory.mktemp("cli"), models_dir, "cli")
    yield service
    service.stop()


def client_env(server: Service, **extra: str) -> dict[str, str]:
    key = server.headers["Authorization"].removeprefix("Bearer ")
    return clean_env(MAMBAFT_URL=server.url, MAMBAFT_API_KEY=key, **extra)


def mambaft(server: Service, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MAMBAFT, *args], env=client_env(server, **env), capture_output=True, text=True, timeout=TIMEOUT_S
    )


def in_terminal(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run `command` with a pseudo-terminal as its stdout and stderr: (exit status, what it drew)."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower, env=env)
    os.close(follower)
    chunks = []
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the command exited and closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    return process.wait(timeout=30), ANSI.sub("", b"".join(chunks).decode(errors="replace"))


@pytest.fixture(scope="module")
def trained(server: Service, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, int, str]:
    """A tiny LoRA job from local files, followed to the end in a terminal: (job id, exit status, output)."""
    folder = tmp_path_factory.mktemp("data")
    (folder / "train.jsonl").write_bytes(demo_slice("train.jsonl", 16))
    (folder / "valid.jsonl").write_bytes(demo_slice("valid.jsonl", 8))
    command = [MAMBAFT, "jobs", "create", "--model", "mamba-tiny", "--precision", "fp32", "--suffix", "cli"]
    command += ["--training-file", str(folder / "train.jsonl"), "--validation-file", str(folder / "valid.jsonl")]
    command += ["--n-epochs", "1", "--batch-size", "4", "--max-seq-len", "64", "--lora-r", "4", "--wait"]
    command += ["--target-module", "in_proj", "--target-module", "x_proj"]
    status, output = in_terminal(command, client_env(server, TERM="xterm-256color", COLUMNS="160", LINES="40"))
    job_id = re.search(r"Created job (ftjob-\w+)", output)
    assert job_id, output
    return job_id.group(1), status, output


def test_jobs_create_wait_draws_a_progress_bar_with_steps_and_loss_and_ends_with_the_outcome(
    trained: tuple[str, int, str],
) -> None:
    job_id, status, output = trained
    tail = output[-3000:]
    assert status == 0, tail
    # The bar's last state: the final step of the total, the loss, the speed, nothing left to wait for.
    assert re.search(r"step (\d+)/\1 +loss \d+\.\d{4} +[\d,]+ tok/s +ETA 0:00", output), tail
    assert not re.search(r"Step \d+/\d+:", output)  # progress events feed the bar, other events print as lines
    assert "base validation loss" in output and "Training finished" in output
    assert re.search(rf"Job {job_id} succeeded: mamba-tiny:ft-cli:{job_id} \(train_loss \d", output), tail


def test_jobs_logs_prints_the_events_oldest_first_and_follow_ends_with_the_finished_job(
    server: Service, trained: tuple[str, int, str]
) -> None:
    job_id = trained[0]
    total = json.loads(mambaft(server, "jobs", "get", job_id, "--json").stdout)["progress"]["total_steps"]

    listed = mambaft(server, "jobs", "logs", job_id)
    followed = mambaft(server, "jobs", "logs", job_id, "--follow", "--json")

    assert listed.returncode == 0, listed.stderr
    steps = [int(m.group(1)) for m in re.finditer(rf"Step (\d+)/{total}: training loss=", listed.stdout)]
    assert steps == list(range(1, total + 1))
    assert listed.stdout.splitlines()[-1].endswith("The job has successfully completed")
    assert followed.returncode == 0, followed.stderr
    events = [json.loads(line) for line in followed.stdout.splitlines()]
    assert [e["data"]["step"] for e in events if e["type"] == "progress"] == list(range(1, total + 1))
    assert events[-1]["message"] == "The job has successfully completed"


def test_jobs_download_unpacks_an_adapter_that_plain_peft_loads(
    server: Service, trained: tuple[str, int, str], tmp_path: Path
) -> None:
    downloaded = mambaft(server, "jobs", "download", trained[0], "--output", str(tmp_path / "adapter"), "--json")

    assert downloaded.returncode == 0, downloaded.stderr
    adapter = Path(json.loads(downloaded.stdout)["path"])
    assert (adapter / "adapter_config.json").is_file()
    assert adapter_logits_change(server.models_dir, adapter) > 1e-4


def test_jobs_results_downloads_the_metrics_csv_and_the_loss_curve(
    server: Service, trained: tuple[str, int, str], tmp_path: Path
) -> None:
    job_id = trained[0]
    job = json.loads(mambaft(server, "jobs", "get", job_id, "--json").stdout)

    fetched = mambaft(server, "jobs", "results", job_id, "--output", str(tmp_path), "--json")

    assert fetched.returncode == 0, fetched.stderr
    metrics_csv, curve = (Path(path) for path in json.loads(fetched.stdout)["paths"])
    rows = list(csv.DictReader(metrics_csv.open()))
    assert list(rows[0]) == [
        "step",
        "train_loss",
        "valid_loss",
        "learning_rate",
        "tokens_per_second",
        "peak_memory_bytes",
    ]
    assert [int(row["step"]) for row in rows] == list(range(1, job["progress"]["total_steps"] + 1))
    assert float(rows[-1]["valid_loss"]) == pytest.approx(job["metrics"]["validation_loss"])
    assert curve.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and curve.stat().st_size > 1000
    listed = json.loads(mambaft(server, "files", "list", "--purpose", "fine-tune-results", "--json").stdout)
    assert {f["id"] for f in listed["data"]} == set(job["result_files"])


def test_a_refused_request_exits_1_with_the_servers_error_naming_the_field(server: Service) -> None:
    args = ["jobs", "create", "--model", "mamba-tiny", "--training-file", "file-nope", "--n-epochs", "0"]

    text = mambaft(server, *args)
    as_json = mambaft(server, *args, "--json")

    assert text.returncode == 1 and text.stdout == ""
    assert text.stderr.startswith("mambaft: 400: ") and "n_epochs" in text.stderr, text.stderr
    assert as_json.returncode == 1
    assert "n_epochs" in json.loads(as_json.stdout)["error"]["param"]


def test_without_the_api_key_a_command_fails_with_401_and_says_so(server: Service) -> None:
    result = subprocess.run(
        [MAMBAFT, "jobs", "list"], env=clean_env(MAMBAFT_URL=server.url), capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 1
    assert result.stderr.startswith("mambaft: 401: "), result.stderr


def test_files_upload_prints_the_id_and_jobs_cancel_cancels_a_job(server: Service, tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_bytes(demo_slice("train.jsonl", 8))
    uploaded = mambaft(server, "files", "upload", str(tmp_path / "train.jsonl"))
    assert uploaded.returncode == 0, uploaded.stderr
    file_id = uploaded.stdout.strip()
    created = mambaft(server, "jobs", "create", "--model", "mamba-tiny", "--training-file", file_id, "--json")
    assert created.returncode == 0, created.stdout
    job_id = json.loads(created.stdout)["id"]

    cancelled = mambaft(server, "jobs", "cancel", job_id)

    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.startswith(f"Job {job_id}: ")
    follow = mambaft(server, "jobs", "logs", job_id, "--follow")  # ends once the cancel took effect
    assert follow.returncode == 0 and "Job cancelled" in follow.stdout, follow.stdout
    assert json.loads(mambaft(server, "jobs", "get", job_id, "--json").stdout)["status"] == "cancelled"


def test_models_create_wait_builds_a_model_that_models_list_shows_ready(server: Service) -> None:
    args = ["models", "create", "tiny-cli", "--family", "mamba", "--d-model", "16", "--n-layer", "1", "--d-state", "4"]

    created = mambaft(server, *args, "--wait")

    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == "Model tiny-cli: ready"
    listed = json.loads(mambaft(server, "models", "list", "--json").stdout)
    assert {"id": "tiny-cli", "status": "ready"}.items() <= next(
        m for m in listed["data"] if m["id"] == "tiny-cli"
    ).items()


def test_eval_wait_scores_the_jobs_adapter(server: Service, trained: tuple[str, int, str]) -> None:
    args = ["eval", "--job", trained[0], "--task", "lookup", "--shots", "0", "--limit", "4", "--precision", "fp32"]

    evaluated = mambaft(server, *args, "--wait", "--json")

    assert evaluated.returncode == 0, evaluated.stderr
    evaluation = json.loads(evaluated.stdout)
    assert evaluation["status"] == "succeeded" and evaluation["fine_tuning_job"] == trained[0]
    assert evaluation["results"]
