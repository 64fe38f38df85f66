"""The base models a job may fine-tune: HF-format folders under `models_dir`, plus configured hub ids.

Everything is read from config.json and safetensors headers, never by loading weights.
"""

import json
import math
import shutil
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.base_models.architectures import (
    COMPANION_STRUCTURES,
    CREATE_REQUEST_FILE,
    LORA_TARGETS,
    MAX_COMPANION_STATE,
    SUPPORTED_MODEL_TYPES,
    VARIANT_FIELD,
    VARIANTS,
)
from app.base_models.schemas import ModelCreate
from app.errors import broker_unavailable, invalid_request, not_found
from app.settings import Settings

# A safetensors header is a few KB to a few MB; anything larger is not one we should parse.
MAX_SAFETENSORS_HEADER = 64 * 1024 * 1024


@dataclass(frozen=True)
class BaseModelInfo:
    id: str
    family: str | None  # None: a hub id whose architecture only the worker can tell
    created: int
    owned_by: str
    parameters: int | None
    status: str = "ready"  # "creating" until the worker has written the weights
    variant: str | None = None  # ssm_structure (Mamba) or a_constraint (Mamba-2); None for hub ids

    @property
    def lora_targets(self) -> tuple[str, ...]:
        return LORA_TARGETS[self.family] if self.family else ()


def list_models(*, settings: Settings, owner: str | None = None) -> list[BaseModelInfo]:
    """Local models first, then hub ids not shadowed by a local folder of the same id.

    A model created over the API is listed to its owner only (owner None: to nobody)."""
    folders = _model_folders(settings.models_dir)
    local = [info for model_id, folder in folders if (info := _read_local(model_id, folder, owner)) is not None]
    local_ids = {info.id for info in local}
    hub = [_hub_model(model_id) for model_id in dict.fromkeys(settings.hub_models) if model_id not in local_ids]
    return local + hub


def get_model(*, settings: Settings, model_id: str, owner: str | None = None) -> BaseModelInfo:
    """The model with this id; raises model_not_found (ids come from the listing, never a joined path)."""
    for info in list_models(settings=settings, owner=owner):
        if info.id == model_id:
            return info
    raise not_found("model_not_found", f"The model {model_id!r} does not exist", param="model")


def hub_family(model_id: str) -> str | None:
    """Guess a hub model's family from its name; the worker checks the real config when it loads it."""
    name = model_id.lower()
    if "mamba2" in name or "mamba-2" in name:
        return "mamba2"
    return "mamba" if "mamba" in name else None


def _hub_model(model_id: str) -> BaseModelInfo:
    org, _, _ = model_id.rpartition("/")
    return BaseModelInfo(id=model_id, family=hub_family(model_id), created=0, owned_by=org or "hub", parameters=None)


def _model_folders(root: Path | None) -> Iterator[tuple[str, Path]]:
    """(id, folder) for `root/<name>` and, hub-style, `root/<org>/<name>` folders holding a config.json."""
    if root is None or not root.is_dir():
        return
    for child in _subfolders(root):
        if (child / "config.json").is_file() or (child / CREATE_REQUEST_FILE).is_file():
            yield child.name, child
            continue
        for grandchild in _subfolders(child):
            if (grandchild / "config.json").is_file():
                yield f"{child.name}/{grandchild.name}", grandchild


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_local(model_id: str, folder: Path, owner: str | None) -> BaseModelInfo | None:
    request = _read_json(folder / CREATE_REQUEST_FILE) if (folder / CREATE_REQUEST_FILE).exists() else None
    if request is not None and (not isinstance(request, dict) or request.get("owner") != owner or owner is None):
        return None  # created by another tenant: as if it did not exist
    config_path = folder / "config.json"
    if request is not None and not config_path.exists():
        return BaseModelInfo(
            id=model_id, family=request["family"], created=request["created"], owned_by=owner or "local",
            parameters=None, status="creating", variant=request[VARIANT_FIELD[request["family"]]],
        )  # fmt: skip
    config = _read_json(config_path)
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in SUPPORTED_MODEL_TYPES:
        return None  # a half-copied or foreign folder is simply not offered
    return BaseModelInfo(
        id=model_id,
        family=model_type,
        created=int(config_path.stat().st_mtime),
        owned_by=owner if request is not None and owner else "local",
        parameters=_count_parameters(folder),
        variant=config.get(VARIANT_FIELD[model_type]) or VARIANTS[model_type][0],
    )


def create_model(
    *, settings: Settings, owner: str, request: ModelCreate, enqueue: Callable[..., None]
) -> BaseModelInfo:
    """Check an architecture request, record it in the new model's folder and ask a worker to build it."""
    assert settings.models_dir is not None
    family = request.family
    field = VARIANT_FIELD[family]
    for other in VARIANT_FIELD.values():
        if other != field and getattr(request, other) is not None:
            raise invalid_request(f"{other} is not an option of {family} models; use {field}", param=other)
    variant = getattr(request, field) or VARIANTS[family][0]
    if variant not in VARIANTS[family]:
        raise invalid_request(f"{field} must be one of {', '.join(VARIANTS[family])}", param=field)
    if variant in COMPANION_STRUCTURES and (request.d_state % 2 or request.d_state > MAX_COMPANION_STATE):
        raise invalid_request(
            f"an {variant} model needs an even d_state of at most {MAX_COMPANION_STATE} (its roots come in"
            " conjugate pairs, and their Vandermonde matrix conditions worse as d_state grows)",
            param="d_state",
        )
    if request.tokenizer != "byte" and not (settings.models_dir / request.tokenizer / "config.json").is_file():
        raise invalid_request("tokenizer must be 'byte' or the id of a local model", param="tokenizer")
    folder = settings.models_dir / request.id
    if folder.exists() or request.id in settings.hub_models:
        raise invalid_request(f"a model with id {request.id!r} already exists", param="id", code="duplicate_model_id")
    record = {**request.model_dump(), field: variant, "owner": owner, "created": int(time.time())}
    folder.mkdir(parents=True)
    (folder / CREATE_REQUEST_FILE).write_text(json.dumps(record, indent=2))
    try:
        enqueue(settings=settings, model_id=request.id)
    except Exception:  # noqa: BLE001 - whatever the broker client raises means "not queued"
        shutil.rmtree(folder, ignore_errors=True)  # no half-requested model stays "creating" for ever
        raise broker_unavailable() from None
    info = _read_local(request.id, folder, owner)
    assert info is not None
    return info


def check_variant(*, model: BaseModelInfo, requested: str | None) -> None:
    """A job may not change a model's structure: a diagonal checkpoint has no exact SC/SO counterpart."""
    if requested is None or model.family is None or requested == model.variant:
        return
    raise invalid_request(
        f"{model.id} is a {model.variant} {model.family} model; a checkpoint cannot be converted to"
        f" ssm_structure {requested!r} (there is no exact conversion between these state matrices). Create"
        " a model with that structure (POST /v1/models) and train it from scratch instead.",
        param="ssm_structure",
        code="structure_change_unsupported",
    )


def _count_parameters(folder: Path) -> int | None:
    """Sum of tensor sizes in the safetensors headers; None when there are none or one is unreadable."""
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        return None
    try:
        return sum(_safetensors_parameters(shard) for shard in shards)
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return None


def _safetensors_parameters(path: Path) -> int:
    with path.open("rb") as src:
        (size,) = struct.unpack("<Q", src.read(8))
        if size > MAX_SAFETENSORS_HEADER:
            raise ValueError(f"{path}: implausible safetensors header of {size} bytes")
        header = json.loads(src.read(size))
    return sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")
