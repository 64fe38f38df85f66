"""The build of a created model as leased work: allowed transitions and the event each writes (in
`work_events`).

Everything that changes `CreatedModel.status` calls `app.work.lifecycle.transition` with MODELS; only
workers and the reaper move a model past queued.
"""

from app.base_models.models import CreatedModel, ModelStatus
from app.work import lifecycle as work

MODELS = work.Lifecycle(
    name="model",
    noun="Model",
    table=CreatedModel,
    key=CreatedModel.uid,
    allowed=work.run_once_table(done=ModelStatus.READY, failed=ModelStatus.FAILED),
    failed=ModelStatus.FAILED,
    record_event=work.work_events_of("model"),
    send=lambda broker, settings, model_uid: broker.enqueue_model_creation(settings=settings, model_uid=model_uid),
)
