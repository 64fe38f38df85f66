"""The evaluation state machine: allowed transitions and the event each writes (in `work_events`).

Everything that changes `Evaluation.status` calls `app.work.lifecycle.transition` with EVALUATIONS;
only workers and the reaper move an evaluation past queued.
"""

from app.evaluations.models import Evaluation, EvaluationStatus
from app.work import lifecycle as work

EVALUATIONS = work.Lifecycle(
    name="evaluation",
    noun="Evaluation",
    table=Evaluation,
    key=Evaluation.id,
    allowed=work.run_once_table(done=EvaluationStatus.SUCCEEDED, failed=EvaluationStatus.FAILED),
    failed=EvaluationStatus.FAILED,
    record_event=work.work_events_of("evaluation"),
    send=lambda broker, settings, evaluation_id: broker.enqueue_evaluation(
        settings=settings, evaluation_id=evaluation_id
    ),
    webhook_object="evaluation",
)
TERMINAL = EVALUATIONS.terminal
