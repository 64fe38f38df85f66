"""`mambaft.create_model`: build the model that `POST /v1/models` recorded, and store it.

The API inserted the owner's row (status creating, the architecture) and sent its uid. This builds the
weights and tokenizer in a scratch folder, packs them into object storage (where every worker fetches
them, worker/model_store.py) and marks the row ready with the real parameter count; any failure marks
it failed with the error, so a model never stays creating because its build went wrong.
"""

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from app.base_models.keys import model_key
from app.base_models.models import CreatedModel, ModelStatus
from app.db import session_scope
from app.settings import Settings
from app.storage import put_file_retrying, storage_from_settings
from worker.archive import pack
from worker.engine.model_builder import Architecture, create_model_folder
from worker.model_store import model_source

log = logging.getLogger(__name__)

ARCHITECTURE_FIELDS = (
    "id",
    "family",
    "d_model",
    "n_layer",
    "d_state",
    "tokenizer",
    "ssm_structure",
    "a_constraint",
    "seed",
)
# The API sends the task before its transaction commits; the row shows up within this long.
ROW_WAIT_S = 10.0
MAX_ERROR_MESSAGE = 2000


def _pending(settings: Settings, model_uid: str) -> tuple[str, dict[str, Any]] | None:
    """(owner, architecture) of the model if it is still to be built; None for a duplicate delivery."""
    deadline = time.monotonic() + ROW_WAIT_S
    while True:
        with session_scope(settings.database_url) as session:
            row = session.get(CreatedModel, model_uid)
            if row is not None:
                return (row.owner, dict(row.architecture)) if row.status == ModelStatus.CREATING else None
        if time.monotonic() > deadline:
            return None
        time.sleep(0.5)


def _finish(settings: Settings, model_uid: str, **values: Any) -> None:
    with session_scope(settings.database_url) as session:
        row = session.get(CreatedModel, model_uid, with_for_update=True)
        if row is not None and row.status == ModelStatus.CREATING:
            for name, value in values.items():
                setattr(row, name, value)


def create_model(*, settings: Settings, model_uid: str) -> None:
    """Build and store the requested model (a no-op when it is no longer being created)."""
    pending = _pending(settings, model_uid)
    if pending is None:
        log.info("model %s is not being created; ignoring this delivery", model_uid)
        return
    owner, architecture = pending
    storage = storage_from_settings(settings)
    try:
        arch = Architecture(**{k: v for k, v in architecture.items() if k in ARCHITECTURE_FIELDS and v is not None})
        tokenizer = None
        if arch.tokenizer != "byte":
            tokenizer = model_source(settings=settings, storage=storage, owner=owner, model_id=arch.tokenizer)
        with tempfile.TemporaryDirectory(prefix=f"mambaft-{model_uid}-") as tmp:
            parameters = create_model_folder(arch, Path(tmp) / "model", tokenizer)
            key = model_key(model_uid)
            archive = pack(Path(tmp) / "model", Path(tmp) / "model.tar.gz")
            put_file_retrying(storage, key, archive, retry_seconds=settings.storage_retry_seconds)
    except Exception as error:
        log.exception("model %s: creation failed", model_uid)
        message = (str(error) or type(error).__name__)[:MAX_ERROR_MESSAGE]
        error_body = {"code": "model_creation_failed", "message": message}
        _finish(settings, model_uid, status=ModelStatus.FAILED, error=error_body)
        return
    _finish(settings, model_uid, status=ModelStatus.READY, parameters=parameters, storage_key=key)
