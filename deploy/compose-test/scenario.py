"""What `make compose-test` does with the running stack: use it as a client and an operator would.

    python3 scenario.py API_URL RUN_SH

RUN_SH is run.sh, whose `compose ARGS...` drives the stack (a key, the tiny models, the worker's restart).
The standard library only, so it runs on the host's python3. Every wait has a deadline; the first thing that
is not as a user expects stops the run with the reason.
"""

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

DEMO = Path(__file__).resolve().parents[2] / "demo"
LOAD_ADAPTER = Path(__file__).with_name("load_adapter.py")
CREATED_MODEL = {"id": "compose-mamba", "family": "mamba", "d_model": 32, "n_layer": 2, "d_state": 8}
# On the demo's 200 examples: about 40 quick steps an epoch. The LoRA job trains two epochs, so that even on
# an idle CPU it is still running when the worker is restarted.
HYPERPARAMETERS = {"n_epochs": 1, "batch_size": 4, "max_seq_len": 32, "learning_rate": 0.01}
FINISHED = ("succeeded", "failed", "cancelled")
START = time.monotonic()


def say(message: str) -> None:
    print(f"   {time.monotonic() - START:6.1f}s  {message}", flush=True)


class ApiError(AssertionError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Api:
    def __init__(self, url: str, key: str | None = None) -> None:
        self.url, self.key = url, key

    def call(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> bytes:
        request = urllib.request.Request(self.url + path, data=body, method=method)
        if self.key:
            request.add_header("Authorization", f"Bearer {self.key}")
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            raise ApiError(
                error.code, f"{method} {path}: {error.code} {error.read().decode(errors='replace')}"
            ) from None

    def get(self, path: str) -> Any:
        return json.loads(self.call("GET", path))

    def post(self, path: str, payload: dict[str, Any]) -> Any:
        return json.loads(self.call("POST", path, json.dumps(payload).encode(), "application/json"))

    def upload(self, path: Path) -> str:
        boundary = uuid.uuid4().hex
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        )
        body = head.encode() + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        return json.loads(self.call("POST", "/v1/files", body, f"multipart/form-data; boundary={boundary}"))["id"]

    def job(self, job_id: str) -> dict[str, Any]:
        return self.get(f"/v1/fine_tuning/jobs/{job_id}")


def wait_until(what: str, fetch: Callable[[], Any], done: Callable[[Any], bool], timeout_s: float) -> Any:
    """fetch()'s first answer that done() accepts, asked every second for up to timeout_s."""
    deadline = time.monotonic() + timeout_s
    answer = None
    while True:
        try:
            answer = fetch()
            if done(answer):
                return answer
        except (urllib.error.URLError, ConnectionError):  # the API (re)starting
            pass
        except ApiError as error:
            if error.status < 500:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s; last answer: {answer}")
        time.sleep(1)


def succeeded(api: Api, job_id: str, timeout_s: float) -> dict[str, Any]:
    job = wait_until(f"job {job_id} to finish", lambda: api.job(job_id), lambda j: j["status"] in FINISHED, timeout_s)
    assert job["status"] == "succeeded", f"job {job_id} ended {job['status']}: {job['error']}"
    return job


def main(url: str, run_sh: str) -> None:
    def compose(*args: str, stdin: Path | None = None) -> str:
        with open(stdin or "/dev/null", "rb") as source:
            done = subprocess.run([run_sh, "compose", *args], stdin=source, capture_output=True, timeout=600)
        assert done.returncode == 0, f"compose {' '.join(args)}: {done.stderr.decode(errors='replace')}"
        return done.stdout.decode()

    anonymous = Api(url)
    wait_until("/healthz", lambda: anonymous.get("/healthz"), bool, 180)
    ready = wait_until(
        "/readyz to see the worker", lambda: anonymous.get("/readyz"), lambda r: r["status"] == "ok", 180
    )
    say(f"/healthz answers, /readyz: {ready}")

    with ThreadPoolExecutor() as pool:  # two slow starts of Python in the containers, side by side
        created = pool.submit(compose, "exec", "-T", "api", "mambaft", "create-key", "--owner", "ci")
        models = pool.submit(
            compose, "exec", "-T", "worker-cpu", "python", "-m", "worker.bootstrap", "--models-dir", "/models"
        )
    models.result()
    key = re.search(r"mft-[\w-]+", created.result())
    assert key, "create-key printed no key"
    api = Api(url, key.group())
    examples = api.upload(DEMO / "valid.jsonl")
    say(f"key created, tiny models in the models volume, demo data uploaded ({examples})")

    # POST /v1/models: a worker builds the model into the bucket; a job on it unpacks it on the worker.
    api.post("/v1/models", CREATED_MODEL)
    model = wait_until(
        "the created model",
        lambda: api.get(f"/v1/models/{CREATED_MODEL['id']}"),
        lambda m: m["status"] != "creating",
        300,
    )
    assert model["status"] == "ready", model
    say(f"model {model['id']} created")

    lora = api.post("/v1/fine_tuning/jobs", {
        "model": "mamba-tiny", "training_file": examples, "precision": "fp32",
        "lora": {"r": 8, "alpha": 16, "target_modules": ["in_proj", "x_proj"]},
        "hyperparameters": HYPERPARAMETERS | {"n_epochs": 2},
    })["id"]  # fmt: skip
    full = api.post("/v1/fine_tuning/jobs", {
        "model": CREATED_MODEL["id"], "training_file": examples, "precision": "fp32", "lora": None,
        "hyperparameters": HYPERPARAMETERS,
    })["id"]  # fmt: skip

    running = wait_until(
        f"job {lora} to train", lambda: api.job(lora), lambda j: j["status"] == "running" and j["progress"]["step"], 300
    )
    say(f"LoRA job {lora} at step {running['progress']['step']}/{running['progress']['total_steps']}: restart worker")
    compose("restart", "worker-cpu")
    job = succeeded(api, lora, 600)
    messages = [event["message"] for event in api.get(f"/v1/fine_tuning/jobs/{lora}/events?limit=100")["data"]]
    resumed = [message for message in messages if message.startswith("resumed at step")]
    assert resumed, f"job {lora} never resumed: {messages}"
    say(f"LoRA job {resumed[0]} after the restart and succeeded: {job['metrics']}")
    say(compose("exec", "-T", "worker-cpu", "python", "-", lora, api.key, stdin=LOAD_ADAPTER).strip())

    job = succeeded(api, full, 600)
    say(f"full fine-tuning of {CREATED_MODEL['id']} ({full}) succeeded: {job['metrics']}")

    # The images' own healthchecks (the worker's first runs a minute after its restart).
    health = wait_until(
        "the API's and the worker's healthchecks",
        lambda: dict(
            line.partition(" ")[::2] for line in compose("ps", "--format", "{{.Service}} {{.Health}}").splitlines()
        ),
        lambda services: services.get("api") == services.get("worker-cpu") == "healthy",
        180,
    )
    say(f"healthchecks: {health}")


if __name__ == "__main__":
    main(*sys.argv[1:])
