"""`mambaft.create_model`: build the model that `POST /v1/models` recorded, and store it.

The API committed the owner's row (queued, with the architecture) and then sent its uid. The build is
leased work like a job (worker/lease.py): this claims the row, a heartbeat renews the lease while it
builds the weights and tokenizer in a scratch folder and packs them into object storage (where every
worker fetches them, worker/model_store.py), and the row turns ready with the real parameter count, or
failed with the error. If this process dies mid-build, the reaper requeues the build once the lease
expires (and fails it after max_attempts), so a model never stays creating.
"""

import logging
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

from app.archive import pack
from app.base_models.keys import model_key
from app.base_models.lifecycle import MODELS
from app.base_models.models import ModelStatus
from app.db import session_scope
from app.settings import Settings
from app.storage import put_file_retrying, storage_from_settings
from worker.engine.model_builder import Architecture, create_model_folder
from worker.failures import failure_body
from worker.lease import Heartbeat, claim, finish, new_holder_id
from worker.model_store import model_source

log = logging.getLogger(__name__)

ARCHITECTURE_FIELDS = tuple(f.name for f in fields(Architecture))


def _build(settings: Settings, model_uid: str, owner: str, architecture: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """Build and store the model; returns what its row gets once ready."""
    storage = storage_from_settings(settings)
    arch = Architecture(**{k: v for k, v in architecture.items() if k in ARCHITECTURE_FIELDS and v is not None})
    tokenizer = None
    if arch.tokenizer != "byte":
        tokenizer = model_source(settings=settings, storage=storage, owner=owner, model_id=arch.tokenizer)
    parameters = create_model_folder(arch, tmp / "model", tokenizer)
    key = model_key(model_uid)
    archive = pack(tmp / "model", tmp / "model.tar.gz")
    put_file_retrying(storage, key, archive, retry_seconds=settings.storage_retry_seconds)
    return {"parameters": parameters, "storage_key": key}


def create_model(*, settings: Settings, model_uid: str) -> None:
    """Build and store the requested model (a no-op when its build is not queued)."""
    holder = new_holder_id()
    with session_scope(settings.database_url) as session:
        row = claim(session, MODELS, model_uid, holder, lease_seconds=settings.lease_seconds)
        pending = None if row is None else (row.owner, dict(row.architecture))
    if pending is None:
        log.info("model %s is not queued; ignoring this delivery", model_uid)
        return
    owner, architecture = pending
    with (
        tempfile.TemporaryDirectory(prefix=f"mambaft-{model_uid}-") as tmp,
        Heartbeat(settings, MODELS, model_uid, holder),
    ):
        try:
            built = _build(settings, model_uid, owner, architecture, Path(tmp))
        except Exception as error:
            log.exception("model %s: creation failed", model_uid)
            failure = failure_body(error, generic="model_creation_failed", scratch=Path(tmp))
            finish(settings, MODELS, model_uid, holder, ModelStatus.FAILED, error=failure)
            return
    finish(settings, MODELS, model_uid, holder, ModelStatus.READY, **built)
