"""The evaluation state changes made after creation; everything that changes `Evaluation.status` calls
`transition`."""

from typing import Any

from app.db import now
from app.evaluations.models import Evaluation, EvaluationStatus

TERMINAL = frozenset({EvaluationStatus.SUCCEEDED, EvaluationStatus.FAILED})


def transition(evaluation: Evaluation, target: EvaluationStatus, **values: Any) -> None:
    """Move `evaluation` to `target` (with `values`, e.g. results or error), releasing its lease unless
    it is now running; the caller holds the row lock and commits."""
    stamp = now()
    evaluation.status = target
    if target == EvaluationStatus.RUNNING and evaluation.started_at is None:
        evaluation.started_at = stamp
    if target != EvaluationStatus.RUNNING:
        evaluation.lease_owner = None
        evaluation.lease_expires_at = None
    if target in TERMINAL:
        evaluation.finished_at = stamp
    if target == EvaluationStatus.QUEUED:  # sent again: the resend clock starts over
        evaluation.queued_at = stamp
        evaluation.resends = 0
    for name, value in values.items():
        setattr(evaluation, name, value)
