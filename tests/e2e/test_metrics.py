"""GET /metrics scraped from `mambaft api --workers 2` and parsed as Prometheus would: request latency
summed over the API processes, and the database's figures (jobs, queue, workers, a busy worker's
throughput as its job hooks report it); the Grafana dashboard queries only metrics a scrape has."""

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.db import now
from app.settings import Settings
from app.storage import ObjectStorage
from worker.engine.spec import Progress, TrainHooks, TrainResult, TrainSpec
from worker.job_runner import run_job
from worker.lease import worker_id
from worker.liveness import beat

from .factories import clean_env, free_port, job_row, make_job
from .service import Service

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "mambaft.json"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
LATENCY = "mambaft_http_request_duration_seconds_count"


@pytest.fixture
def api(settings: Settings, tmp_path: Path) -> Iterator[Service]:
    """Two API processes sharing one port, over the test's database (auth off: a loopback bind)."""
    assert settings.models_dir is not None
    service = Service(url=f"http://127.0.0.1:{free_port()}", models_dir=settings.models_dir, settings=settings, logs=[])
    env = clean_env(
        MAMBAFT_DATA_DIR=str(settings.data_dir),
        MAMBAFT_MODELS_DIR=str(settings.models_dir),
        MAMBAFT_AUTH_DISABLED="true",
    )
    port = service.url.rsplit(":", 1)[1]
    service.start(["api", "--host", "127.0.0.1", "--port", port, "--workers", "2"], env, tmp_path)
    service.wait_ready()
    yield service
    service.stop()


def scrape(service: Service) -> Samples:
    """One scrape on a new connection (so either process may answer), as {(name, labels): value}."""
    response = httpx.get(f"{service.url}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_every_api_process_reports_the_requests_all_of_them_served(api: Service) -> None:
    for _ in range(24):
        assert httpx.get(f"{api.url}/healthz").status_code == 200
    for job in ("ftjob-a", "ftjob-b", "ftjob-c"):
        assert httpx.get(f"{api.url}/v1/fine_tuning/jobs/{job}").status_code == 404

    for _ in range(4):
        samples = scrape(api)
        assert samples[(LATENCY, (("method", "GET"), ("route", "/healthz"), ("status", "200")))] == 24
        job_route = (("method", "GET"), ("route", "/v1/fine_tuning/jobs/{fine_tuning_job_id}"), ("status", "404"))
        assert samples[(LATENCY, job_route)] == 3
        assert not [labels for _, labels in samples if "ftjob-a" in str(labels)]  # templates, never raw paths
    # The processes pool their counts in the data dir's folder, one file per process.
    assert list((api.settings.data_dir / "prometheus").glob("histogram_*.db"))


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bmambaft_[a-z_]+\b", expr))


def test_a_scrape_reports_jobs_queue_workers_and_a_busy_workers_throughput(
    api: Service, storage: ObjectStorage
) -> None:
    settings = api.settings
    make_job(settings, storage, created_at=now() - 120)
    make_job(settings, storage)
    running = make_job(settings, storage)
    beat(settings, started_at=now())  # this process stands in for a live worker
    during: list[Samples] = []

    def train(spec: TrainSpec, hooks: TrainHooks) -> TrainResult:
        figures = dict(tokens_per_second=1234.5, steps_per_second=2.5, peak_memory_bytes=3 * 2**30)
        hooks.on_progress(Progress(1, 4, 0, 2.0, 1e-3, eta_seconds=1.2, trained_tokens=512, **figures))
        during.append(scrape(api))
        adapter = spec.output_dir / "adapter"
        adapter.mkdir(parents=True)
        return TrainResult(adapter_dir=adapter, trained_tokens=512, steps=4, metrics={})

    run_job(settings=settings, job_id=running, train=train)
    assert job_row(settings, running).status == "succeeded"

    [samples] = during
    me = (("worker", worker_id()),)
    assert samples[("mambaft_database_up", ())] == 1
    assert samples[("mambaft_jobs", (("state", "queued"),))] == 2
    assert samples[("mambaft_jobs", (("state", "running"),))] == 1
    assert samples[("mambaft_queue_depth", ())] == 2
    assert 120 <= samples[("mambaft_queue_oldest_age_seconds", ())] < 180
    assert samples[("mambaft_workers_alive", ())] == 1
    assert samples[("mambaft_worker_tokens_per_second", me)] == 1234.5
    assert samples[("mambaft_worker_steps_per_second", me)] == 2.5
    assert samples[("mambaft_worker_peak_memory_bytes", me)] == 3 * 2**30

    # Every metric the dashboard queries is in a real scrape.
    dashboard = json.loads(DASHBOARD.read_text())
    queried = {name for panel in dashboard["panels"] for t in panel["targets"] for name in _metric_names(t["expr"])}
    scraped = {name for name, _ in samples}
    assert queried and queried <= scraped, queried - scraped

    time.sleep(0.1)
    after = scrape(api)
    assert after[("mambaft_jobs", (("state", "succeeded"),))] == 1
    assert ("mambaft_worker_tokens_per_second", me) not in after  # an idle worker reports no throughput
