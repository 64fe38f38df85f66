"""Evaluations are leased like jobs (worker/lease.py, worker/reaper.py): a duplicate delivery is a no-op,
the heartbeat keeps the lease alive, a lost worker's evaluation is requeued, re-sent and completed by the
next delivery, and it fails once every attempt lost its worker; one whose message the broker lost after
the commit is sent again by the reaper. Scoring is stubbed: no model loads here."""

import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from app.db import new_id, now, session_scope
from app.evaluations.models import Evaluation, EvaluationStatus
from app.settings import Settings
from app.work.models import WorkEvent
from worker.evaluation.run import EvalSpec
from worker.evaluation_runner import run_evaluation
from worker.reaper import reap

RESULTS: dict[str, Any] = {"tasks": []}


class WorkerDied(BaseException):
    """The worker process dying mid-evaluation: escapes every `except Exception`, as a crash would."""


class Sent(list):
    """Records what the reaper sends to the queue, in place of the broker."""

    def enqueue_job(self, *, settings: Settings, job_id: str) -> None:
        self.append(job_id)

    def enqueue_evaluation(self, *, settings: Settings, evaluation_id: str) -> None:
        self.append(evaluation_id)

    def enqueue_model_creation(self, *, settings: Settings, model_uid: str) -> None:
        self.append(model_uid)

    def ping_broker(self, *, settings: Settings) -> None:
        pass

    def reap(self, settings: Settings) -> list[str]:
        return reap(settings=settings, broker=self)


@pytest.fixture
def add_evaluation(settings: Settings) -> Callable[..., str]:
    """Insert an evaluation (queued, of alice, on a shipped task unless `fields` say otherwise); its id."""

    def add(**fields: Any) -> str:
        values = (
            dict(
                id=new_id("eval"),
                owner="alice",
                model="mamba-tiny",
                tasks=["lookup"],
                shots=[0],
                precision="fp32",
                seed=0,
                status=EvaluationStatus.QUEUED,
                created_at=now(),
            )
            | fields
        )
        with session_scope(settings.database_url) as session:
            session.add(Evaluation(**values))
        return str(values["id"])

    return add


def row(settings: Settings, evaluation_id: str) -> Evaluation:
    with session_scope(settings.database_url) as session:
        evaluation = session.get(Evaluation, evaluation_id)
    assert evaluation is not None
    return evaluation


def shift(settings: Settings, evaluation_id: str, **values: Any) -> None:
    with session_scope(settings.database_url) as session:
        session.execute(update(Evaluation).where(Evaluation.id == evaluation_id).values(**values))


def test_duplicate_delivery_is_a_no_op(settings: Settings, add_evaluation: Callable[..., str]) -> None:
    evaluation_id = add_evaluation()
    scored: list[EvalSpec] = []

    def score(spec: EvalSpec, reference: dict[str, Any] | None) -> dict[str, Any]:
        scored.append(spec)
        # Delivered again while the first delivery runs: the claim fails, nothing is scored twice.
        run_evaluation(settings=settings, evaluation_id=evaluation_id, score=score)
        return RESULTS

    run_evaluation(settings=settings, evaluation_id=evaluation_id, score=score)
    run_evaluation(settings=settings, evaluation_id=evaluation_id, score=score)  # redelivered after the end

    evaluation = row(settings, evaluation_id)
    assert len(scored) == 1 and evaluation.status == EvaluationStatus.SUCCEEDED and evaluation.results == RESULTS
    assert evaluation.attempts == 1 and evaluation.lease_owner is None and evaluation.lease_expires_at is None


def test_heartbeat_renews_the_lease_while_scoring(
    make_settings: Callable[..., Settings], database_url: str, add_evaluation: Callable[..., str]
) -> None:
    settings = make_settings(database_url=database_url, heartbeat_seconds=1)
    evaluation_id = add_evaluation()
    renewed: list[int] = []

    def score(spec: EvalSpec, reference: dict[str, Any] | None) -> dict[str, Any]:
        shift(settings, evaluation_id, lease_expires_at=0)
        for _ in range(30):  # the heartbeat ticks every second
            if (expires := row(settings, evaluation_id).lease_expires_at or 0) > now():
                renewed.append(expires)
                break
            time.sleep(0.1)
        return RESULTS

    run_evaluation(settings=settings, evaluation_id=evaluation_id, score=score)
    assert renewed and row(settings, evaluation_id).status == EvaluationStatus.SUCCEEDED


def test_lost_worker_is_requeued_resent_and_the_next_delivery_completes(
    settings: Settings, add_evaluation: Callable[..., str]
) -> None:
    evaluation_id = add_evaluation()

    def die(spec: EvalSpec, reference: dict[str, Any] | None) -> dict[str, Any]:
        raise WorkerDied

    with pytest.raises(WorkerDied):
        run_evaluation(settings=settings, evaluation_id=evaluation_id, score=die)
    assert row(settings, evaluation_id).status == EvaluationStatus.RUNNING  # orphaned, as after a real crash
    sent = Sent()
    assert sent.reap(settings) == [] and sent == []  # its lease has not run out yet

    shift(settings, evaluation_id, lease_expires_at=now() - 1)
    assert sent.reap(settings) == [evaluation_id] and sent == [evaluation_id]
    evaluation = row(settings, evaluation_id)
    assert evaluation.status == EvaluationStatus.QUEUED and evaluation.lease_owner is None

    run_evaluation(settings=settings, evaluation_id=sent[-1], score=lambda spec, reference: RESULTS)
    evaluation = row(settings, evaluation_id)
    assert evaluation.status == EvaluationStatus.SUCCEEDED and evaluation.results == RESULTS
    assert evaluation.attempts == 2 and evaluation.finished_at is not None


def test_worker_that_lost_its_lease_writes_nothing(settings: Settings, add_evaluation: Callable[..., str]) -> None:
    evaluation_id = add_evaluation()

    def taken_over(spec: EvalSpec, reference: dict[str, Any] | None) -> dict[str, Any]:
        shift(settings, evaluation_id, lease_owner="next-attempt")  # reaped and claimed by another worker
        return RESULTS

    run_evaluation(settings=settings, evaluation_id=evaluation_id, score=taken_over)
    evaluation = row(settings, evaluation_id)
    assert evaluation.status == EvaluationStatus.RUNNING and evaluation.lease_owner == "next-attempt"
    assert evaluation.results is None


def test_lost_on_every_attempt_fails_with_an_error_code(settings: Settings, add_evaluation: Callable[..., str]) -> None:
    evaluation_id = add_evaluation(
        status=EvaluationStatus.RUNNING,
        attempts=settings.max_attempts,
        lease_owner="gone-worker",
        lease_expires_at=now() - 1,
        started_at=now(),
    )
    sent = Sent()
    assert sent.reap(settings) == [evaluation_id] and sent == []
    evaluation = row(settings, evaluation_id)
    assert evaluation.status == EvaluationStatus.FAILED and evaluation.error is not None
    assert evaluation.error["code"] == "max_attempts_exceeded" and evaluation.finished_at is not None
    assert evaluation.lease_owner is None and evaluation.lease_expires_at is None

    run_evaluation(settings=settings, evaluation_id=evaluation_id, score=lambda spec, reference: RESULTS)
    assert row(settings, evaluation_id).status == EvaluationStatus.FAILED  # a late delivery changes nothing


def test_queued_evaluation_nobody_took_is_resent_with_backoff(
    settings: Settings, add_evaluation: Callable[..., str]
) -> None:
    evaluation_id = add_evaluation()
    sent = Sent()
    assert sent.reap(settings) == []  # just queued: its message is presumably on the way

    shift(settings, evaluation_id, queued_at=Evaluation.queued_at - settings.lease_seconds)
    assert sent.reap(settings) == [evaluation_id] and sent == [evaluation_id]
    assert sent.reap(settings) == []

    # The next resend waits twice as long as the first.
    shift(settings, evaluation_id, queued_at=Evaluation.queued_at - settings.lease_seconds)
    assert sent.reap(settings) == []
    shift(settings, evaluation_id, queued_at=Evaluation.queued_at - settings.lease_seconds)
    assert sent.reap(settings) == [evaluation_id]
    evaluation = row(settings, evaluation_id)
    assert evaluation.resends == 2 and evaluation.status == EvaluationStatus.QUEUED


def test_list_shows_only_the_callers_evaluations_newest_first(
    make_client: Callable[..., TestClient], add_evaluation: Callable[..., str]
) -> None:
    older, newer = add_evaluation(created_at=now() - 10), add_evaluation()
    bobs = add_evaluation(owner="bob")
    alice = make_client("alice")

    first = alice.get("/v1/evaluations", params={"limit": 1}).json()
    assert [e["id"] for e in first["data"]] == [newer] and first["has_more"]
    rest = alice.get("/v1/evaluations", params={"after": newer}).json()
    assert [e["id"] for e in rest["data"]] == [older] and not rest["has_more"]
    assert [e["id"] for e in make_client("bob").get("/v1/evaluations").json()["data"]] == [bobs]
    assert alice.get("/v1/evaluations", params={"after": bobs}).status_code == 400  # another owner's cursor


def test_an_evaluation_whose_message_the_broker_lost_is_sent_by_the_reaper_and_runs(
    client: TestClient, broker: Any, settings: Settings
) -> None:
    assert settings.models_dir is not None
    (settings.models_dir / "mamba-tiny").mkdir(parents=True)
    (settings.models_dir / "mamba-tiny" / "config.json").write_text('{"model_type": "mamba"}')
    broker.loses_messages = True  # answers the check, then drops the message: down between the two
    created = client.post("/v1/evaluations", json={"model": "mamba-tiny", "tasks": ["lookup"]})
    assert created.status_code == 200, created.text
    evaluation_id = created.json()["id"]
    assert created.json()["status"] == "queued" and broker.evaluations == []

    broker.loses_messages = False
    assert reap(settings=settings, broker=broker) == []  # its message may still be on the way
    shift(settings, evaluation_id, queued_at=Evaluation.queued_at - settings.lease_seconds)
    assert reap(settings=settings, broker=broker) == [evaluation_id]
    assert broker.evaluations == [evaluation_id]

    run_evaluation(settings=settings, evaluation_id=broker.evaluations[-1], score=lambda spec, reference: RESULTS)
    evaluation = client.get(f"/v1/evaluations/{evaluation_id}").json()
    assert evaluation["status"] == "succeeded" and evaluation["results"] == RESULTS


def test_every_state_change_of_an_evaluation_is_recorded_as_an_event(
    settings: Settings, add_evaluation: Callable[..., str]
) -> None:
    evaluation_id = add_evaluation()
    run_evaluation(settings=settings, evaluation_id=evaluation_id, score=lambda spec, reference: RESULTS)
    with session_scope(settings.database_url) as session:
        events = session.scalars(
            select(WorkEvent).where(WorkEvent.kind == "evaluation", WorkEvent.subject_id == evaluation_id)
        ).all()
        moves = [(event.data["from"], event.data["to"]) for event in events if event.type == "state"]
    assert moves == [("queued", "running"), ("running", "succeeded")]
