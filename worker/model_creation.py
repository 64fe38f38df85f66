"""`mambaft.create_model`: materialize a base model that `POST /v1/models` requested.

The API wrote `models_dir/<id>/mambaft_create.json` (the architecture and its owner); this writes the
weights and tokenizer beside it. config.json is renamed into place last: the listing offers a folder
as ready only once its config.json exists, so a half-written model is never trained on.
"""

import json
import shutil
import tempfile
from pathlib import Path

from app.base_models.architectures import CREATE_REQUEST_FILE
from app.settings import Settings
from worker.engine.architecture import Architecture, create_model_folder

ARCHITECTURE_FIELDS = ("id", "family", "d_model", "n_layer", "d_state", "tokenizer", "ssm_structure", "a_constraint", "seed")


def create_model(*, settings: Settings, model_id: str) -> Path:
    """Build the requested model in its folder (a no-op when it is already built)."""
    assert settings.models_dir is not None
    folder = settings.models_dir / model_id
    if (folder / "config.json").is_file():
        return folder
    request = json.loads((folder / CREATE_REQUEST_FILE).read_text())
    arch = Architecture(**{k: v for k, v in request.items() if k in ARCHITECTURE_FIELDS and v is not None})
    tokenizer_folder = None if arch.tokenizer == "byte" else settings.models_dir / arch.tokenizer
    tmp = Path(tempfile.mkdtemp(prefix=f".{model_id}.", dir=settings.models_dir))
    try:
        create_model_folder(arch, tmp, tokenizer_folder)
        for item in sorted(tmp.iterdir(), key=lambda p: p.name == "config.json"):  # config.json last
            item.rename(folder / item.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
