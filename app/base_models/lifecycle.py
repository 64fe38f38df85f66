"""The build of a created model as leased work: allowed transitions and the event each writes (in
`work_events`).

Everything that changes `CreatedModel.status` calls `app.work.lifecycle.transition` with MODELS; only
workers and the reaper move a model past queued.
"""

from app.base_models.models import CreatedModel, ModelStatus
from app.work import lifecycle as work

ALLOWED: dict[str, frozenset[str]] = {
    ModelStatus.QUEUED: frozenset({ModelStatus.RUNNING, ModelStatus.FAILED}),
    # running -> queued: the worker building it was lost (lease expired).
    ModelStatus.RUNNING: frozenset({ModelStatus.READY, ModelStatus.FAILED, ModelStatus.QUEUED}),
    ModelStatus.READY: frozenset(),
    ModelStatus.FAILED: frozenset(),
}

MODELS = work.Lifecycle(
    name="model",
    noun="Model",
    table=CreatedModel,
    key=CreatedModel.uid,
    allowed=ALLOWED,
    failed=ModelStatus.FAILED,
    record_event=work.work_events_of("model"),
    send=lambda broker, settings, model_uid: broker.enqueue_model_creation(settings=settings, model_uid=model_uid),
)
