"""Fixed-rate load on the API over Postgres: mixed reads and keyed creates, p50/p99 latency, errors.

    .venv/bin/python bench/api_load.py [--seconds 60] [--rate 300] [--workers 1] [--warmup 5] \
        [--postgres postgresql://postgres@127.0.0.1:5432/test] [--redis redis://127.0.0.1:6379/15]

Starts `mambaft api --workers N` on a free loopback port over a fresh database on the given Postgres
server (dropped afterwards), with the embedded filesystem broker or, with `--redis`, Redis: the jobs it
creates are queued, not trained. One job runs meanwhile as the API sees a running job: this process
claims it and drives the worker's own lease heartbeat, cancel polling and progress writes
(`worker.job_hooks.JobHooks`) at their real rates, without the training itself (which runs on a GPU
host, not the API's). Requests are sent open-loop at the fixed rate (a slow answer does not slow the
sender down), at most MAX_IN_FLIGHT at once; latency is measured from the moment a request was due, so
queueing behind a stall counts against the server. The sender is aiohttp: httpx's async pool costs more
CPU per request than the server does, and on a small box it became the bottleneck. The report gives the
CPU the sender and the server used (in cores) and the load average, since they share the machine.
"""

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import httpx
import psutil
import psycopg
import redis

from app.celery_config import QUEUE
from app.db import session_scope
from app.settings import Settings
from app.storage import storage_from_settings
from worker.engine.spec import Progress
from worker.job_hooks import JobHooks
from worker.lease import Heartbeat, claim, new_holder_id

MAMBAFT = str(Path(sys.executable).with_name("mambaft"))
MODEL = "state-spaces/mamba-130m-hf"
MAX_IN_FLIGHT = 64
# Share of each request kind; creates carry an Idempotency-Key, a fifth of them a retried one.
MIX = {"get_job": 0.35, "list_jobs": 0.25, "list_events": 0.25, "create_job": 0.15}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Load:
    def __init__(self, http: aiohttp.ClientSession, training_file: str, seed_job: str) -> None:
        self.http = http
        self.training_file = training_file
        self.jobs = [seed_job]
        self.keys: list[str] = []
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: dict[str, int] = defaultdict(int)
        self.rng = random.Random(0)

    async def one(self, kind: str, due: float) -> None:
        try:
            ok = await self._send(kind) < 400
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        self.latency[kind].append(time.perf_counter() - due)
        if not ok:
            self.errors[kind] += 1

    async def _send(self, kind: str) -> int:
        """Send one request of `kind`; returns its status."""
        job = self.rng.choice(self.jobs)
        if kind == "create_job":
            retry = self.keys and self.rng.random() < 0.2
            key = self.rng.choice(self.keys) if retry else uuid.uuid4().hex
            self.keys.append(key)
            body = {"model": MODEL, "training_file": self.training_file, "seed": 1}
            async with self.http.post("/v1/fine_tuning/jobs", json=body, headers={"Idempotency-Key": key}) as r:
                if r.status == 200:
                    self.jobs.append((await r.json())["id"])
                return r.status
        path = {
            "get_job": f"/v1/fine_tuning/jobs/{job}",
            "list_jobs": "/v1/fine_tuning/jobs?limit=20",
            "list_events": f"/v1/fine_tuning/jobs/{job}/events?limit=20",
        }[kind]
        async with self.http.get(path) as response:
            await response.read()
            return response.status


# How often the simulated training loop calls the worker's hooks; they throttle their own writes.
STEP_SECONDS = 0.1


def run_job(settings: Settings, job_id: str, stop: threading.Event) -> None:
    """Hold `job_id` running as a worker does, minus the training, until `stop` is set."""
    lease_holder = new_holder_id()
    with session_scope(settings.database_url) as session:
        if claim(session, job_id, lease_holder, lease_seconds=settings.lease_seconds) is None:
            raise RuntimeError(f"could not claim {job_id}")
    with Heartbeat(settings, job_id, lease_holder) as heartbeat:
        hooks = JobHooks(
            settings=settings,
            storage=storage_from_settings(settings),
            job_id=job_id,
            holder=lease_holder,
            heartbeat=heartbeat,
            shutdown=stop,
        )
        step = 0
        while not hooks.should_stop():
            step += 1
            hooks.on_progress(
                Progress(
                    step=step,
                    total_steps=10**9,
                    epoch=0,
                    loss=1.0,
                    learning_rate=1e-3,
                    tokens_per_second=1e4,
                    eta_seconds=1e3,
                    trained_tokens=step * 1024,
                )
            )
            time.sleep(STEP_SECONDS)


@contextmanager
def running_job(settings: Settings, job_id: str) -> Iterator[None]:
    """`run_job` on a thread for the duration of the block."""
    stop_job = threading.Event()
    thread = threading.Thread(target=run_job, args=(settings, job_id, stop_job), name="running-job")
    thread.start()
    try:
        yield
    finally:
        stop_job.set()
        thread.join()


def cpu_seconds(processes: Iterable[psutil.Process]) -> float:
    """User + system CPU time of these processes."""
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):  # a Postgres backend that exited while being read
            total += sum(process.cpu_times()[:2])
    return total


def server_processes(server: subprocess.Popen[bytes]) -> list[psutil.Process]:
    """The API process and its children (uvicorn's workers)."""
    process = psutil.Process(server.pid)
    return [process, *process.children(recursive=True)]


def postgres_processes() -> list[psutil.Process]:
    """The machine's Postgres processes (their work for other clients included)."""
    return [p for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]


def create_seed_job(base_url: str, headers: dict[str, str]) -> tuple[str, str]:
    """A training file and a job on it; returns their ids."""
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as setup:
        upload = setup.post(
            "/v1/files", files={"file": ("t.jsonl", b'{"text": "hello"}\n' * 8)}, data={"purpose": "fine-tune"}
        )
        training_file = upload.raise_for_status().json()["id"]
        seed_job = setup.post("/v1/fine_tuning/jobs", json={"model": MODEL, "training_file": training_file})
        return training_file, seed_job.raise_for_status().json()["id"]


async def run_load(
    base_url: str, headers: dict[str, str], training_file: str, seed_job_id: str, rate: float, seconds: float
) -> dict:
    connector = aiohttp.TCPConnector(limit=MAX_IN_FLIGHT)
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(base_url, headers=headers, connector=connector, timeout=timeout) as http:
        load = Load(http, training_file, seed_job_id)
        kinds, weights = list(MIX), list(MIX.values())
        total = int(rate * seconds)
        tasks: set[asyncio.Task] = set()
        start, cpu_start = time.perf_counter(), time.process_time()
        for i in range(total):  # bounded: exactly rate x seconds requests
            due = start + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            task = asyncio.create_task(load.one(load.rng.choices(kinds, weights)[0], due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
        sender_cpu = time.process_time() - cpu_start
    per_kind = {
        kind: {
            "n": len(values),
            "p50_ms": round(1000 * statistics.median(values), 1),
            "p99_ms": round(1000 * percentile(values, 0.99), 1),
            "errors": load.errors[kind],
        }
        for kind, values in sorted(load.latency.items())
    }
    reads = [v for kind, values in load.latency.items() if kind != "create_job" for v in values]
    return {
        "requests": total,
        "achieved_rate": round(total / elapsed, 1),
        # Past saturation the queue grows and the late requests time out: what the server kept up with.
        "answered_ok_per_s": round((total - sum(load.errors.values())) / elapsed, 1),
        "elapsed_s": round(elapsed, 1),
        "sender_cpu_cores": round(sender_cpu / elapsed, 2),
        "errors": sum(load.errors.values()),
        "reads_p50_ms": round(1000 * statistics.median(reads), 1),
        "reads_p99_ms": round(1000 * percentile(reads, 0.99), 1),
        "per_kind": per_kind,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rate", type=float, default=300)
    parser.add_argument("--warmup", type=float, default=5, help="seconds of the same load first, not counted")
    parser.add_argument("--workers", type=int, default=1, help="API processes (`mambaft api --workers`)")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test", help="an admin URL")
    parser.add_argument(
        "--redis",
        help="a Redis database as the broker, as in production (redis://127.0.0.1:6379/15); its queue is"
        " deleted afterwards. Default: the embedded filesystem broker",
    )
    args = parser.parse_args()

    name = f"mambaft_bench_{uuid.uuid4().hex[:12]}"
    url = args.postgres.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
    with psycopg.connect(args.postgres, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    folder = Path(tempfile.mkdtemp(prefix="mambaft-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAMBAFT_")}
    env.update(MAMBAFT_DATA_DIR=str(folder), MAMBAFT_DATABASE_URL=url, MAMBAFT_HUB_MODELS=json.dumps([MODEL]))
    if args.redis:
        env["MAMBAFT_BROKER_URL"] = args.redis
    server = None
    try:
        subprocess.run([MAMBAFT, "migrate"], env=env, check=True, capture_output=True)
        created = subprocess.run([MAMBAFT, "create-key", "--owner", "bench"], env=env, check=True, capture_output=True)
        headers = {"Authorization": f"Bearer {created.stdout.decode().strip()}"}
        port = free_port()
        log = (folder / "api.log").open("wb")
        command = [MAMBAFT, "api", "--port", str(port), "--workers", str(args.workers)]
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        base_url = f"http://127.0.0.1:{port}"
        wait_up(base_url)
        training_file, seed_job = create_seed_job(base_url, headers)
        with running_job(Settings(data_dir=folder, database_url=url), seed_job):
            if args.warmup:
                # Not counted: the API processes' first requests open their database connections and
                # warm their caches, a cost paid once per process, not per request.
                asyncio.run(run_load(base_url, headers, training_file, seed_job, args.rate, args.warmup))
            load_before, server_cpu = os.getloadavg()[0], cpu_seconds(server_processes(server))
            postgres_cpu = cpu_seconds(postgres_processes())
            result = asyncio.run(run_load(base_url, headers, training_file, seed_job, args.rate, args.seconds))
            server_cpu = cpu_seconds(server_processes(server)) - server_cpu
            postgres_cpu = cpu_seconds(postgres_processes()) - postgres_cpu
        machine = {
            "server_cpu_cores": round(server_cpu / result["elapsed_s"], 2),
            # What an answer costs the server whatever else runs on the machine: compare this across changes.
            "server_cpu_ms_per_ok": round(1000 * server_cpu / max(1, result["requests"] - result["errors"]), 2),
            # Postgres exited processes (finished backends) drop out of the sum, so this is a lower bound.
            "postgres_cpu_cores": round(postgres_cpu / result["elapsed_s"], 2),
            "load_average_1m": [load_before, os.getloadavg()[0]],
            "cpus": os.cpu_count(),
        }
        print(
            json.dumps(
                {"seconds": args.seconds, "warmup": args.warmup, "rate": args.rate, "workers": args.workers}
                | result
                | machine,
                indent=2,
            )
        )
    finally:
        if server is not None:
            stop(server)
        if args.redis:
            redis.Redis.from_url(args.redis).delete(QUEUE)
        with psycopg.connect(args.postgres, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def wait_up(base_url: str) -> None:
    for _ in range(300):
        try:
            if httpx.get(f"{base_url}/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"the API at {base_url} did not come up")


def stop(server: subprocess.Popen[bytes]) -> None:
    # uvicorn waits for open connections on SIGTERM; after an overloaded run some may never finish.
    server.terminate()
    try:
        server.wait(30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


if __name__ == "__main__":
    main()
