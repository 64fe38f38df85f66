"""The state machine of leased work: each kind's allowed transitions, the event every transition writes,
and the resend clock of a queued row.

Every kind (jobs, evaluations, model builds) is a `Lifecycle`; everything that changes a leased row's
status calls `transition` with it, and nothing else assigns the status.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.orm import InstrumentedAttribute, Session

from app.db import now
from app.queue import Broker
from app.settings import Settings
from app.webhooks.outbox import record_state_change
from app.work.models import LeasedColumns, LeaseStatus, WorkEvent

# A queued row nobody took is sent again after lease_seconds, then after twice that, and so on: a
# backlog behind one long job costs a few duplicate (no-op) messages, not one a minute.
MAX_RESEND_DOUBLINGS = 6
RESEND_REASON = "resent"


class RecordEvent(Protocol):
    def __call__(
        self, session: Session, subject_id: str, type_: str, message: str, *, data: dict[str, Any] | None, level: str
    ) -> object: ...


@dataclass(frozen=True)
class Lifecycle:
    """One kind of leased work: its table, its transition table and where its events go."""

    name: str  # job | evaluation | model
    noun: str  # how its events name it: "Job"
    table: type[LeasedColumns]
    key: InstrumentedAttribute[str]  # the column naming a row on the queue and in events
    allowed: Mapping[str, frozenset[str]]  # status -> the statuses it may move to
    failed: str  # the status whose events are errors
    record_event: RecordEvent
    send: Callable[[Broker, Settings, str], None]  # the broker message that has a worker take a row
    # Its name in webhook event types (`fine_tuning.job.succeeded`); None: its changes send no webhooks.
    webhook_object: str | None = None

    @property
    def terminal(self) -> frozenset[str]:
        return frozenset(status for status, targets in self.allowed.items() if not targets)

    def id_of(self, row: Any) -> str:
        return getattr(row, self.key.key)


def run_once_table(*, done: str, failed: str) -> dict[str, frozenset[str]]:
    """The transitions of work that is queued, run and then done or failed, and queued again when the
    worker running it was lost (its lease expired): evaluations and model builds."""
    return {
        LeaseStatus.QUEUED: frozenset({LeaseStatus.RUNNING, failed}),
        LeaseStatus.RUNNING: frozenset({done, failed, LeaseStatus.QUEUED}),
        done: frozenset(),
        failed: frozenset(),
    }


class InvalidTransition(Exception):
    def __init__(self, lifecycle: Lifecycle, row_id: str, current: str, target: str) -> None:
        super().__init__(f"{lifecycle.name} {row_id} cannot go from {current} to {target}")
        self.current = current
        self.target = target


def events_in(table: type[Any], subject: str, **fixed: str) -> RecordEvent:
    """The event recorder writing rows of `table` (JobEvent, WorkEvent), naming their row in its column
    `subject`, with `fixed` values (a WorkEvent's kind)."""

    def record(
        session: Session,
        subject_id: str,
        type_: str,
        message: str,
        *,
        data: dict[str, Any] | None = None,
        level: str = "info",
    ) -> Any:
        event = table(
            **{subject: subject_id}, **fixed, created_at=now(), type=type_, message=message, data=data, level=level
        )
        session.add(event)
        return event

    return record


def work_events_of(kind: str) -> RecordEvent:
    """The event recorder of a kind that keeps its events in `work_events`."""
    return events_in(WorkEvent, "subject_id", kind=kind)


def transition(
    session: Session,
    lifecycle: Lifecycle,
    row: Any,
    target: str,
    *,
    message: str | None = None,
    error: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Move `row` to `target`, stamp its times and lease, and record a `state` event and its webhook
    deliveries (caller commits)."""
    previous = row.status
    if target not in lifecycle.allowed[previous]:
        raise InvalidTransition(lifecycle, lifecycle.id_of(row), previous, target)
    row.status = target
    stamp = now()
    if target == LeaseStatus.RUNNING and row.started_at is None:
        row.started_at = stamp
    if target != LeaseStatus.RUNNING:
        row.lease_owner = None
        row.lease_expires_at = None
    if target in lifecycle.terminal:
        row.finished_at = stamp
    if target == LeaseStatus.QUEUED:  # sent (again): the resend clock starts over
        row.queued_at = stamp
        row.resends = 0
    if error is not None:
        row.error = error
    lifecycle.record_event(
        session,
        lifecycle.id_of(row),
        "state",
        message or f"{lifecycle.noun} moved from {previous} to {target}",
        data={"from": previous, "to": str(target), **(data or {})},
        level="error" if target == lifecycle.failed else "info",
    )
    if lifecycle.webhook_object is not None:
        record_state_change(
            session,
            owner=row.owner,
            object_=lifecycle.webhook_object,
            subject_id=lifecycle.id_of(row),
            status=str(target),
            previous=previous,
            error=row.error,
        )


def resend_due(row: LeasedColumns, stamp: int, lease_seconds: int) -> bool:
    """Whether a queued row waited long enough since it was queued (or last re-sent) to be sent again."""
    return stamp - row.queued_at >= lease_seconds * 2 ** min(row.resends, MAX_RESEND_DOUBLINGS)


def mark_resent(session: Session, lifecycle: Lifecycle, row: LeasedColumns, stamp: int) -> None:
    """Restart the resend clock of a queued row about to be sent again, with an event saying so."""
    row.queued_at = stamp
    row.resends += 1
    lifecycle.record_event(
        session,
        lifecycle.id_of(row),
        "message",
        f"No worker has taken the {lifecycle.name} yet; sent it to the queue again",
        data={"reason": RESEND_REASON},
        level="info",
    )
