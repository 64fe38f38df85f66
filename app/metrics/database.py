"""Figures read from the database at scrape time, so every API process reports the same ones: jobs by
state, the queue, live workers, and what each busy worker last reported for its job (its progress event,
written by worker/job_hooks.py). Totals across tenants: no owner, no job id, no file name."""

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db import now, session_scope
from app.jobs.lifecycle import JobStatus
from app.jobs.models import Job, JobEvent
from app.settings import Settings
from app.workers.alive import alive_window_seconds
from app.workers.models import WorkerHeartbeat

# What a progress event's data holds (worker/job_hooks.py) -> the gauge it feeds, labelled by worker.
WORKER_FIGURES = {
    "steps_per_second": ("mambaft_worker_steps_per_second", "Training steps a second of the job the worker runs"),
    "tokens_per_second": ("mambaft_worker_tokens_per_second", "Trained tokens a second of the job the worker runs"),
    "peak_memory_bytes": (
        "mambaft_worker_peak_memory_bytes",
        "Peak GPU memory of the job the worker runs (absent on CPU workers)",
    ),
}


def _worker(lease_owner: str | None) -> str:
    """The "host:pid" of the worker holding a lease (worker/lease.py: holder ids are "host:pid:attempt")."""
    return (lease_owner or "").rsplit(":", 1)[0]


class DatabaseCollector(Collector):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("mambaft_database_up", "Whether the API could read these figures from its database")
        try:
            with session_scope(self.settings.database_url) as session:
                metrics = list(self._read(session))
        except Exception:  # an outage shows as up=0 (and /readyz says which); the scrape itself still answers
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from metrics

    def _read(self, session: Session) -> Iterator[Metric]:
        stamp = now()
        counts: dict[str, int] = dict(session.execute(select(Job.status, func.count()).group_by(Job.status)).all())
        jobs = GaugeMetricFamily("mambaft_jobs", "Fine-tuning jobs by state", labels=["state"])
        for state in JobStatus:
            jobs.add_metric([state.value], counts.get(state.value, 0))
        yield jobs
        yield GaugeMetricFamily("mambaft_queue_depth", "Jobs waiting for a worker", value=counts.get("queued", 0))
        oldest = session.scalar(select(func.min(Job.created_at)).where(Job.status == JobStatus.QUEUED))
        yield GaugeMetricFamily(
            "mambaft_queue_oldest_age_seconds",
            "Age (since it was created) of the oldest job waiting for a worker; 0 when none waits",
            value=0 if oldest is None else max(0, stamp - oldest),
        )
        since = stamp - alive_window_seconds(self.settings)
        alive = session.scalar(select(func.count()).where(WorkerHeartbeat.last_seen >= since))
        yield GaugeMetricFamily("mambaft_workers_alive", "Workers whose heartbeat is recent", value=alive or 0)
        yield from self._worker_figures(session)

    def _worker_figures(self, session: Session) -> Iterator[Metric]:
        latest_progress = (
            select(func.max(JobEvent.id))
            .where(JobEvent.job_id == Job.id, JobEvent.type == "progress")
            .correlate(Job)
            .scalar_subquery()
        )
        running = session.execute(
            select(Job.lease_owner, JobEvent.data)
            .join(JobEvent, JobEvent.id == latest_progress)
            .where(Job.status == JobStatus.RUNNING)
        ).all()
        families = {
            key: GaugeMetricFamily(name, text, labels=["worker"]) for key, (name, text) in WORKER_FIGURES.items()
        }
        for lease_owner, data in running:
            for key, family in families.items():
                value = (data or {}).get(key)
                if isinstance(value, int | float):
                    family.add_metric([_worker(lease_owner)], value)
        yield from families.values()
