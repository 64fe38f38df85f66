"""The reaper (worker/reaper.py): what happens to jobs whose worker vanished or whose message was lost.
The retry of a requeued job resuming from its checkpoint is in test_job_runner.py."""

from typing import Any

from sqlalchemy import select, update

from app.db import now, session_scope
from app.jobs.lifecycle import JobStatus
from app.jobs.models import Job, JobEvent
from app.settings import Settings
from app.storage import ObjectStorage
from worker.reaper import reap

from .factories import job_row, make_job


def running_job(settings: Settings, storage: ObjectStorage, *, lease_left: int, **fields: Any) -> str:
    return make_job(
        settings,
        storage,
        status=JobStatus.RUNNING,
        lease_owner="gone-worker",
        lease_expires_at=now() + lease_left,
        started_at=now(),
        **{"attempts": 1, **fields},
    )


def age_events(settings: Settings, job_id: str, seconds: int) -> None:
    """Pretend everything recorded about the job happened `seconds` earlier."""
    with session_scope(settings.database_url) as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(created_at=Job.created_at - seconds, queued_at=Job.queued_at - seconds)
        )
        session.execute(
            update(JobEvent).where(JobEvent.job_id == job_id).values(created_at=JobEvent.created_at - seconds)
        )


def test_reaper_leaves_live_leases_alone(settings: Settings, storage: ObjectStorage, broker: Any) -> None:
    job_id = running_job(settings, storage, lease_left=30)
    assert reap(settings=settings, broker=broker) == []
    assert job_row(settings, job_id).status == JobStatus.RUNNING and broker.enqueued == []


def test_reaper_fails_job_after_max_attempts(settings: Settings, storage: ObjectStorage, broker: Any) -> None:
    job_id = running_job(settings, storage, lease_left=-1, attempts=settings.max_attempts)
    assert reap(settings=settings, broker=broker) == [job_id]
    job = job_row(settings, job_id)
    assert job.status == JobStatus.FAILED and broker.enqueued == []
    assert job.error["code"] == "max_attempts_exceeded"


def test_reaper_cancels_lost_job_whose_cancel_was_requested(
    settings: Settings, storage: ObjectStorage, broker: Any
) -> None:
    job_id = running_job(settings, storage, lease_left=-1, cancel_requested=True)
    assert reap(settings=settings, broker=broker) == [job_id]
    assert job_row(settings, job_id).status == JobStatus.CANCELLED and broker.enqueued == []


def test_reaper_resends_a_queued_job_nobody_took_with_backoff(settings: Settings, storage: ObjectStorage) -> None:
    job_id = make_job(settings, storage)
    assert reap(settings=settings) == []  # just queued: its message is presumably on the way

    age_events(settings, job_id, settings.lease_seconds)
    assert reap(settings=settings) == [job_id]  # through the real (embedded) broker
    assert len(list((settings.broker_folder / "queue").glob("*.msg"))) == 1
    assert reap(settings=settings) == []

    # The next resend waits twice as long as the first.
    age_events(settings, job_id, settings.lease_seconds)
    assert reap(settings=settings) == []
    age_events(settings, job_id, settings.lease_seconds)
    assert reap(settings=settings) == [job_id]

    with session_scope(settings.database_url) as session:
        resends = session.scalars(select(JobEvent).where(JobEvent.job_id == job_id)).all()
    assert [e.data["reason"] for e in resends] == ["resent", "resent"]
    assert job_row(settings, job_id).status == JobStatus.QUEUED
