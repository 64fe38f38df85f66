"""A real job through `mambaft serve` next to bench/step.py's step of the same shape, in one call.

What a user runs must be what the step benchmark measures: this starts `mambaft serve` on a free port
with a fresh data dir, creates a random-init model of the shape through POST /v1/models (byte
tokenizer), uploads a generated training file, runs one LoRA job (bf16, batch 8 x 1024, the step
bench's targets) and reads the job's reported tokens/s. With the service stopped, it then times
bench/step.py's engine of the same shape and vocabulary in this process, and prints both and the ratio.

GPU (with the kernel and service wheels of ../shared/device/README.md on PYTHONPATH):
    python3 bench/job_gpu.py [mamba|mamba2] [--shape 130m|1.4b] [--steps 40]
CPU, end to end on the tiny shape (d_model 128 x 4 layers, batch 4 x 256, fp32):
    python3 bench/job_gpu.py mamba --cpu --tiny

The job's figure is its `metrics.tokens_per_second`: trained tokens over training seconds of the steps
past the attempt's warm-up (kernel compilation, CUDA-graph capture: `trainer.WARMUP_STEPS`), checkpoints
and progress hooks excluded, as the step bench measures its own steps after warm-up.
"""

import argparse
import itertools
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))
import step  # noqa: E402  (bench/step.py, beside this file)

from app.base_models.parameters import BYTE_VOCAB_SIZE, padded_vocab  # noqa: E402
from app.families import FAMILIES  # noqa: E402

STATE = {"mamba": 16, "mamba2": 128}  # d_state of bench/step.py's models
TERMINAL = ("succeeded", "failed", "cancelled")
WORDS = ("state", "space", "model", "selective", "scan", "token", "layer", "channel", "kernel", "gradient")
# The embedding rows of a model POST /v1/models builds with the byte tokenizer, for the step bench.
VOCAB = padded_vocab(BYTE_VOCAB_SIZE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def training_texts(tokens: int, seed: int = 0) -> list[str]:
    """Texts holding at least `tokens` byte-tokenizer tokens, each about 4,000."""
    rng = random.Random(seed)
    texts, size = [], 0
    while size < tokens:
        texts.append(" ".join(rng.choice(WORDS) for _ in range(600)))
        size += len(texts[-1]) + 1  # one token per byte, and the EOS
    return texts


def rows_with_several_documents(texts: list[str], seq: int) -> float:
    """The share of the job's rows of `seq` tokens that hold a document boundary: the worker packs the texts
    back to back (worker/engine/data.py), one token per byte and an EOS each."""
    ends = list(itertools.accumulate(len(text) + 1 for text in texts))
    rows = ends[-1] // seq
    split = {end // seq for end in ends[:-1] if end % seq and end // seq < rows}
    return len(split) / max(1, rows)


def wait_for(check, what: str, timeout: float, serve: subprocess.Popen, log: Path):
    """Poll `check` until it returns something truthy; fail with the service log's tail if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if serve.poll() is not None:
            sys.exit(f"mambaft serve exited ({serve.returncode}) while waiting for {what}\n{log.read_text()[-4000:]}")
        try:
            found = check()
        except httpx.TransportError:
            found = None
        if found:
            return found
        time.sleep(1)
    sys.exit(f"no {what} after {timeout:.0f} s\n{log.read_text()[-4000:]}")


def run_job(
    args: argparse.Namespace, d: int, layers: int, batch: int, seq: int, texts: list[str], data_dir: Path
) -> dict:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env["MAMBAFT_MAX_MODEL_PARAMETERS"] = str(10**12)
    if args.cpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    log = data_dir / "serve.log"
    command = [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        serve = subprocess.Popen(
            [*command, "--data-dir", str(data_dir / "var")],
            cwd=data_dir,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            wait_for(lambda: client.get("/readyz").status_code == 200, "ready service", 600, serve, log)
            model_id = f"bench-{args.family}-{d}x{layers}"
            shape = {"family": args.family, "d_model": d, "n_layer": layers, "d_state": STATE[args.family]}
            client.post("/v1/models", json={"id": model_id, **shape}).raise_for_status()

            def model_ready() -> dict | None:
                model = client.get(f"/v1/models/{model_id}").raise_for_status().json()
                if model["status"] == "failed":
                    sys.exit(f"building {model_id} failed: {model}")
                return model if model["status"] == "ready" else None

            model = wait_for(model_ready, f"model {model_id}", 1800, serve, log)
            content = "".join(json.dumps({"text": text}) + "\n" for text in texts).encode()
            upload = client.post("/v1/files", files={"file": ("train.jsonl", content)}, data={"purpose": "fine-tune"})
            precision = "fp32" if args.cpu else "bf16"
            body = {
                "model": model_id,
                "training_file": upload.raise_for_status().json()["id"],
                "precision": precision,
                "lora": {"r": 8, "alpha": 16, "target_modules": list(FAMILIES[args.family].default_targets)},
                "hyperparameters": {"n_epochs": 1, "batch_size": batch, "max_seq_len": seq, "learning_rate": 1e-5},
            }
            job_id = client.post("/v1/fine_tuning/jobs", json=body).raise_for_status().json()["id"]

            def finished() -> dict | None:
                job = client.get(f"/v1/fine_tuning/jobs/{job_id}").raise_for_status().json()
                return job if job["status"] in TERMINAL else None

            job = wait_for(finished, f"end of job {job_id}", 3600, serve, log)
            if job["status"] != "succeeded":
                sys.exit(f"job {job_id} ended {job['status']}: {job['error']}\n{log.read_text()[-4000:]}")
            events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 100}).json()["data"]
            progress = [e["data"] for e in events if e["type"] == "progress"]
            messages = [e["message"] for e in events if e["type"] == "message"]
            last = max(progress, key=lambda p: p["step"]) if progress else {}
            metrics = job["metrics"]
            return dict(
                source="job",
                model=model_id,
                parameters=model.get("parameters"),
                precision=precision,
                batch=batch,
                seq=seq,
                steps=metrics.get("steps"),
                tokens_per_s=round(metrics["tokens_per_second"]),
                last_progress_tokens_per_s=round(last.get("tokens_per_second", 0)),
                peak_GiB=round((metrics.get("peak_memory_bytes") or 0) / 2**30, 2),  # none on the CPU
                messages=messages,  # the engine's own notes: adapted layers, a failed CUDA-graph capture
                # Each step's own seconds, oldest first: where a job's pace differs from the bench's.
                step_seconds=[round(p["step_seconds"], 4) for p in sorted(progress, key=lambda p: p["step"])],
            )
    finally:
        serve.send_signal(signal.SIGTERM)  # serve stops its worker on SIGTERM
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("family", choices=["mamba", "mamba2"], nargs="?", default="mamba")
    parser.add_argument("--shape", choices=list(step.SHAPES), default="130m")
    parser.add_argument("--steps", type=int, default=40, help="training steps of the job, at least")
    parser.add_argument("--cpu", action="store_true", help="run the job and the step bench on the CPU, in fp32")
    parser.add_argument("--tiny", action="store_true", help="d_model 128 x 4 layers, batch 4 x 256")
    args = parser.parse_args()
    d, layers = (128, 4) if args.tiny else step.SHAPES[args.shape]
    batch, seq = (4, 256) if args.tiny else (8, 1024)
    texts = training_texts(args.steps * batch * seq * 11 // 10)
    with tempfile.TemporaryDirectory(prefix="mambaft-job-bench-") as tmp:
        job = run_job(args, d, layers, batch, seq, texts, Path(tmp))
    job["rows_with_several_documents"] = round(rows_with_several_documents(texts, seq), 3)
    print(json.dumps(job), flush=True)
    device = "cpu" if args.cpu else "cuda"
    engine = "ours" if args.cpu else "ours_graph"  # a job's step on CUDA is captured as a graph
    # The job's rows carry packed documents' seq_idx; the bench with 2 documents a row takes that route too.
    for documents in (1, 2) if job["rows_with_several_documents"] else (1,):
        bench = step.measure(
            engine, args.family, d, layers, batch, seq, device, steps=4, precision=job["precision"], vocab=VOCAB,
            documents=documents, windows=5,
        )  # fmt: skip
        bench.pop("top_kernels_ms", None)
        print(json.dumps(dict(source="bench/step.py", **bench)), flush=True)
        ratio = round(job["tokens_per_s"] / bench["tokens_per_s"], 2)
        print(json.dumps(dict(job_vs_step=ratio, step_documents_per_row=documents)), flush=True)


if __name__ == "__main__":
    main()
