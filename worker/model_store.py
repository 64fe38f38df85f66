"""Where a worker finds the model a job, an evaluation or a model creation names, for that owner.

The owner's created model (a row, its packed weights in object storage) comes first: it is downloaded
once into `settings.model_cache_dir/<uid>` and reused by every later job on this host. Otherwise a
shared folder under models_dir, else the id itself, for transformers to fetch from the hub.
"""

import tempfile
from pathlib import Path

from app.archive import unpack
from app.base_models.models import ModelStatus, created_model
from app.db import session_scope
from app.settings import Settings
from app.storage import ObjectStorage, StorageUnavailable
from worker.engine.spec import ModelLoadFailed


class ModelUnavailable(ModelLoadFailed):
    """The owner's created model has no stored weights (still creating, or its creation failed)."""


def model_source(*, settings: Settings, storage: ObjectStorage, owner: str, model_id: str) -> Path | str:
    with session_scope(settings.database_url) as session:
        row = created_model(session, owner, model_id)
        found = None if row is None else (row.uid, row.status, row.public_status, row.storage_key)
    if found is None:
        return shared_model_source(settings, model_id)
    uid, status, shown, key = found
    if status != ModelStatus.READY or key is None:
        raise ModelUnavailable(f"the model {model_id!r} is {shown}; it has no weights to load")
    try:
        return cached_archive(settings, storage, uid, key)
    except StorageUnavailable:
        raise  # an outage, not a broken model
    except Exception as error:
        raise ModelLoadFailed(f"the stored model {model_id!r} could not be fetched: {error}") from error


def shared_model_source(settings: Settings, model_id: str) -> Path | str:
    """A folder under models_dir when there is one (never outside it), else the hub id."""
    assert settings.models_dir is not None
    root = settings.models_dir.resolve()
    folder = (root / model_id).resolve()
    return folder if folder.is_relative_to(root) and folder != root and folder.is_dir() else model_id


def cached_archive(settings: Settings, storage: ObjectStorage, uid: str, key: str) -> Path:
    """The stored archive `key` unpacked into `model_cache_dir/<uid>`, fetched on first use. Archives cached
    here (a created model's weights, a succeeded job's adapter) never change, so a cached folder is never
    stale; it appears by one rename, so a reader never sees it half-unpacked."""
    cache = settings.model_cache_dir
    folder = cache / uid
    if folder.is_dir():
        return folder
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{uid}.", dir=cache) as tmp:
        archive = Path(tmp) / "model.tar.gz"
        storage.get_file(key, archive)
        unpacked = unpack(archive, Path(tmp) / "model")
        try:
            unpacked.rename(folder)
        except OSError:
            if not folder.is_dir():  # not a concurrent fetch of the same model that renamed first
                raise
    return folder
