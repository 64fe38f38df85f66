"""A worker SIGKILLed while it uploads a finished job's adapter, on the production stack: the S3 server
got part of the archive, yet nothing is stored under the adapter's key and the API keeps answering
"not ready"; the reaper requeues the job, the retry publishes the adapter, and the download is the
complete archive, which plain peft loads."""

import contextlib
import io
import re
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError

from app.jobs.keys import adapter_key
from e2e.conftest import S3_BUCKET
from e2e.factories import adapter_logits_change

from .production_stack import LEASE_S, REAPER_INTERVAL_S, ProductionStack, is_transition, production_stack, worker_pid
from .test_faults_mid_job import CLAIM_TIMEOUT_S

TRAIN_LINES = 16
CHUNK = 64 * 1024
# The start of a request that uploads an adapter archive (app/jobs/keys.py), path-style or not.
ADAPTER_PUT = re.compile(rb"PUT /\S*/adapter\.tar\.gz[ ?]")
# How much of that request reaches the S3 server before the rest is held: its headers and part of the
# archive, so the server has a half-written object in hand when the worker dies.
PASSED_BYTES = 8 * 1024
STALL_TIMEOUT_S = 120


class StallingProxy:
    """A TCP proxy in front of the S3 server that passes everything through, except that while
    `stalling` is set, a request uploading an adapter gets its first PASSED_BYTES through and the rest
    is held: the upload hangs with no answer, as on a stalled network, until its client goes away."""

    def __init__(self, upstream: str) -> None:
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.stalling = threading.Event()
        self.stalling.set()
        self.stalled = threading.Event()  # an adapter upload is being held now
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client, socket.create_connection(self.upstream) as upstream:
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
            self._forward_requests(client, upstream)

    def _forward_requests(self, client: socket.socket, upstream: socket.socket) -> None:
        # A keep-alive connection carries one request after another; a client sends the next only after
        # the answer to the last, so each request starts at the beginning of a read.
        allowance: int | None = None  # bytes of the held request still to pass; None: nothing held
        try:
            while chunk := client.recv(CHUNK):
                if allowance is None and self.stalling.is_set() and ADAPTER_PUT.match(chunk):
                    allowance = PASSED_BYTES
                if allowance is not None:
                    passed, allowance = chunk[:allowance], max(0, allowance - len(chunk))
                    if len(passed) < len(chunk):
                        self.stalled.set()
                    chunk = passed
                upstream.sendall(chunk)
        except OSError:  # the client was killed
            pass
        finally:
            # Shut down, not just closed: that wakes the answer pipe, and the S3 server sees the upload cut off.
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _pipe(source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(CHUNK):
                target.sendall(chunk)
        except OSError:
            pass


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[StallingProxy]:
    running = StallingProxy(s3_endpoint)
    yield running
    running.close()


@pytest.fixture
def stack(tmp_path: Path, models_dir: Path, s3_endpoint: str) -> Iterator[ProductionStack]:
    with production_stack(tmp_path, models_dir, s3_endpoint) as running:
        yield running


def stored_adapter(stack: ProductionStack, s3_endpoint: str, job_id: str) -> bool:
    """Whether the S3 server holds an object under the job's adapter key (asked directly, not via the API)."""
    prefix = urlparse(stack.env["MAMBAFT_STORAGE_URL"]).path.strip("/")
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    try:
        client.head_object(Bucket=S3_BUCKET, Key=f"{prefix}/{adapter_key(job_id)}")
    except ClientError:
        return False
    return True


def test_a_worker_killed_mid_adapter_upload_leaves_no_partial_adapter_and_the_retry_publishes_it_whole(
    stack: ProductionStack, proxy: StallingProxy, s3_endpoint: str, models_dir: Path, tmp_path: Path
) -> None:
    assert stack.api is not None
    stack.env["MAMBAFT_S3_ENDPOINT_URL"] = proxy.endpoint  # the workers' storage goes through the proxy
    for _ in range(2):  # one to kill, one whose reaper requeues the job and which takes it over
        stack.start_worker()
    job_id = stack.create_job(train_lines=TRAIN_LINES)
    claim = stack.wait_for_event(job_id, is_transition("queued", "running"), CLAIM_TIMEOUT_S)
    assert proxy.stalled.wait(STALL_TIMEOUT_S), f"no adapter upload was held\n{stack.log_tail()}"
    adapter_url = f"{stack.api.url}/v1/fine_tuning/jobs/{job_id}/adapter"

    during = httpx.get(adapter_url, timeout=30)
    killed_at = time.time()
    next(w for w in stack.workers if w.pid == worker_pid(claim)).kill()
    proxy.stalling.clear()  # the retry's upload goes through

    assert (during.status_code, during.json()["error"]["code"]) == (409, "adapter_not_ready")
    requeue = stack.wait_for_event(job_id, is_transition("running", "queued"), LEASE_S + 30)
    assert requeue.created_at - killed_at <= LEASE_S + REAPER_INTERVAL_S + 1
    # The S3 server dropped the cut-off upload: no partial object under the key, none for the API to serve.
    assert not stored_adapter(stack, s3_endpoint, job_id)
    assert httpx.get(adapter_url, timeout=30).status_code == 409

    job = stack.wait_terminal(job_id)
    assert (job.status, job.attempts) == ("succeeded", 2), f"{job.error}\n{stack.log_tail()}"
    archive = httpx.get(adapter_url, timeout=60)
    assert archive.status_code == 200, archive.text
    adapter = tmp_path / "adapter"
    with tarfile.open(fileobj=io.BytesIO(archive.content), mode="r:gz") as tar:  # a cut archive fails here
        tar.extractall(adapter, filter="data")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}
    assert adapter_logits_change(models_dir, adapter) > 1e-4
