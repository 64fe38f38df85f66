"""The evaluation state machine: allowed transitions and the event each writes (in `work_events`).

Everything that changes `Evaluation.status` calls `app.work.lifecycle.transition` with EVALUATIONS;
only workers and the reaper move an evaluation past queued.
"""

from app.evaluations.models import Evaluation, EvaluationStatus
from app.work import lifecycle as work

ALLOWED: dict[str, frozenset[str]] = {
    EvaluationStatus.QUEUED: frozenset({EvaluationStatus.RUNNING, EvaluationStatus.FAILED}),
    # running -> queued: the worker was lost (lease expired).
    EvaluationStatus.RUNNING: frozenset({EvaluationStatus.SUCCEEDED, EvaluationStatus.FAILED, EvaluationStatus.QUEUED}),
    EvaluationStatus.SUCCEEDED: frozenset(),
    EvaluationStatus.FAILED: frozenset(),
}

EVALUATIONS = work.Lifecycle(
    name="evaluation",
    noun="Evaluation",
    table=Evaluation,
    key=Evaluation.id,
    allowed=ALLOWED,
    failed=EvaluationStatus.FAILED,
    record_event=work.work_events_of("evaluation"),
    send=lambda broker, settings, evaluation_id: broker.enqueue_evaluation(
        settings=settings, evaluation_id=evaluation_id
    ),
)
TERMINAL = EVALUATIONS.terminal
