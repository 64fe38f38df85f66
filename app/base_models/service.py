"""The base models a job may fine-tune: the operator's shared ones (HF-format folders under `models_dir`,
configured hub ids), visible to every tenant, and each tenant's own created models (rows, see models.py).

Shared models are read from config.json and safetensors headers, never by loading weights. A created
model's id may not repeat a shared one; should the operator add a shared model of that id later, the
tenant's own keeps the name for that tenant. Another tenant's models are never consulted, so no answer
depends on them.
"""

import json
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.base_models.lifecycle import MODELS
from app.base_models.models import CREATING, CreatedModel, ModelStatus, created_model
from app.base_models.parameters import BYTE_VOCAB_SIZE, parameter_count
from app.base_models.schemas import ModelCreate
from app.db import new_id, now
from app.errors import ApiError, conflict, invalid_request, not_found
from app.families import FAMILIES, SUPPORTED_MODEL_TYPES, VARIANT_FIELDS, hub_family
from app.families.family import ShapeError
from app.families.mamba import COMPANION_STRUCTURES, MAX_COMPANION_STATE
from app.queue import Broker
from app.settings import Settings
from app.work.dispatch import commit_then_send, require_broker

# A safetensors header is a few KB to a few MB; anything larger is not one we should parse.
MAX_SAFETENSORS_HEADER = 64 * 1024 * 1024
BYTE_TOKENIZER = "byte"
# Versions before the models table built a tenant's model as a folder in models_dir holding this file:
# such a folder is that tenant's, so it is never offered as a shared model.
TENANT_FOLDER_MARKER = "mambaft_create.json"


@dataclass(frozen=True)
class BaseModelInfo:
    id: str
    family: str | None  # None: a hub id whose architecture only the worker can tell
    created: int
    owned_by: str
    parameters: int | None
    status: str = ModelStatus.READY
    variant: str | None = None  # ssm_structure (Mamba) or a_constraint (Mamba-2); None for hub ids
    error: dict[str, Any] | None = None  # why a created model failed
    vocab_size: int | None = None  # embedding rows, where known without loading (not for hub ids)
    options: dict[str, Any] | None = None  # a created model's architecture options, defaults filled

    @property
    def lora_targets(self) -> tuple[str, ...]:
        return FAMILIES[self.family].lora_targets if self.family else ()

    @property
    def variant_field(self) -> str | None:
        """The config field `variant` is the value of (None for a hub id)."""
        return FAMILIES[self.family].variant_field if self.family else None


def list_models(*, session: Session, settings: Settings, owner: str) -> list[BaseModelInfo]:
    """Shared models (local folders, then hub ids not shadowed by a folder), then the owner's created ones."""
    own = [_created_info(row) for row in _created_rows(session, owner)]
    own_ids = {info.id for info in own}
    return [info for info in _shared_models(settings) if info.id not in own_ids] + own


def get_model(*, session: Session, settings: Settings, owner: str, model_id: str) -> BaseModelInfo:
    """The model with this id that `owner` may see; raises model_not_found (ids come from the listing or
    an exact row match, never a joined path)."""
    row = created_model(session, owner, model_id)
    if row is not None:
        return _created_info(row)
    for info in _shared_models(settings):
        if info.id == model_id:
            return info
    raise not_found("model_not_found", f"The model {model_id!r} does not exist", param="model")


def _shared_models(settings: Settings) -> list[BaseModelInfo]:
    folders = _model_folders(settings.models_dir)
    local = [info for model_id, folder in folders if (info := _read_local(model_id, folder)) is not None]
    local_ids = {info.id for info in local}
    hub = [_hub_model(model_id) for model_id in dict.fromkeys(settings.hub_models) if model_id not in local_ids]
    return local + hub


def _hub_model(model_id: str) -> BaseModelInfo:
    org, _, _ = model_id.rpartition("/")
    return BaseModelInfo(id=model_id, family=hub_family(model_id), created=0, owned_by=org or "hub", parameters=None)


def _created_rows(session: Session, owner: str) -> list[CreatedModel]:
    statement = select(CreatedModel).where(CreatedModel.owner == owner)
    statement = statement.order_by(CreatedModel.created_at, CreatedModel.id)
    return list(session.scalars(statement))


def _created_info(row: CreatedModel) -> BaseModelInfo:
    return BaseModelInfo(
        id=row.id,
        family=row.family,
        created=row.created_at,
        owned_by=row.owner,
        parameters=row.parameters,
        status=row.public_status,
        variant=row.variant,
        error=row.error,
        vocab_size=row.architecture["vocab_size"],
        options=row.architecture.get("options", {}),
    )


def _model_folders(root: Path | None) -> Iterator[tuple[str, Path]]:
    """(id, folder) for `root/<name>` and, hub-style, `root/<org>/<name>` folders holding a config.json."""
    if root is None or not root.is_dir():
        return
    for child in _subfolders(root):
        if (child / "config.json").is_file():
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


def _read_local(model_id: str, folder: Path) -> BaseModelInfo | None:
    if (folder / TENANT_FOLDER_MARKER).exists():
        return None
    config_path = folder / "config.json"
    config = _read_json(config_path)
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in SUPPORTED_MODEL_TYPES:
        return None  # a half-copied or foreign folder is simply not offered
    vocab_size = config.get("vocab_size")
    return BaseModelInfo(
        id=model_id,
        family=model_type,
        created=int(config_path.stat().st_mtime),
        owned_by="local",
        parameters=_count_parameters(folder),
        variant=config.get(FAMILIES[model_type].variant_field) or FAMILIES[model_type].variants[0],
        vocab_size=vocab_size if isinstance(vocab_size, int) and vocab_size > 0 else None,
    )


def create_model(
    *, session: Session, settings: Settings, broker: Broker, owner: str, request: ModelCreate
) -> BaseModelInfo:
    """Check an architecture request, record it as the owner's model (status creating: its build queued),
    commit it and ask a worker to build it."""
    variant = _variant(request)
    family = FAMILIES[request.family]
    if request.d_model % family.d_model_multiple:
        raise invalid_request(
            f"a {request.family} model's d_model must be a multiple of {family.d_model_multiple}: "
            f"{family.d_model_rule}",
            param="d_model",
        )
    try:
        shape = family.shape(
            d_model=request.d_model,
            n_layer=request.n_layer,
            d_state=request.d_state,
            variant=variant,
            options=request.options,
        )
    except ShapeError as error:
        raise invalid_request(str(error), param=error.param) from None
    vocab_size = _tokenizer_vocab(session=session, settings=settings, owner=owner, tokenizer=request.tokenizer)
    parameters = parameter_count(
        family=request.family,
        d_model=request.d_model,
        n_layer=request.n_layer,
        d_state=request.d_state,
        variant=variant,
        vocab_size=vocab_size,
        options=shape.options,
    )
    if parameters > settings.max_model_parameters:
        raise invalid_request(
            f"d_model {request.d_model}, n_layer {request.n_layer} and d_state {request.d_state} make a model of"
            f" {parameters:,} parameters; this service creates models of at most {settings.max_model_parameters:,}",
            param="d_model",
            code="model_too_large",
        )
    duplicate = invalid_request(f"a model with id {request.id!r} already exists", param="id", code="duplicate_model_id")
    if any(info.id == request.id for info in _shared_models(settings)) or created_model(session, owner, request.id):
        raise duplicate
    architecture = {
        **request.model_dump(exclude=set(VARIANT_FIELDS)),
        FAMILIES[request.family].variant_field: variant,
        "options": dict(shape.options),
        "vocab_size": vocab_size,
    }
    require_broker(broker=broker, settings=settings)
    row = CreatedModel(
        uid=new_id("model"),
        owner=owner,
        id=request.id,
        family=request.family,
        variant=variant,
        architecture=architecture,
        parameters=parameters,
        status=ModelStatus.QUEUED,
        created_at=now(),
    )
    session.add(row)
    try:
        session.flush()
    except IntegrityError:  # the same owner's concurrent create of this id committed first
        raise duplicate from None
    commit_then_send(session=session, broker=broker, settings=settings, lifecycle=MODELS, row_id=row.uid)
    return _created_info(row)


def _variant(request: ModelCreate) -> str:
    family = FAMILIES[request.family]
    field = family.variant_field
    for other in VARIANT_FIELDS:
        if other != field and getattr(request, other) is not None:
            raise invalid_request(f"{other} is not an option of {family.model_type} models; use {field}", param=other)
    variant = getattr(request, field) or family.variants[0]
    if variant not in family.variants:
        raise invalid_request(f"{field} must be one of {', '.join(family.variants)}", param=field)
    if variant in COMPANION_STRUCTURES and (request.d_state % 2 or request.d_state > MAX_COMPANION_STATE):
        raise invalid_request(
            f"an {variant} model needs an even d_state of at most {MAX_COMPANION_STATE} (its roots come in"
            " conjugate pairs, and their Vandermonde matrix conditions worse as d_state grows)",
            param="d_state",
        )
    return variant


def _tokenizer_vocab(*, session: Session, settings: Settings, owner: str, tokenizer: str) -> int:
    """The vocabulary size of the requested tokenizer: "byte", or a ready model the owner can see whose
    size is known here (a shared folder or their own created model). Anything else is one answer, so it
    tells nothing about what exists elsewhere."""
    if tokenizer == BYTE_TOKENIZER:
        return BYTE_VOCAB_SIZE
    refused = invalid_request(
        "tokenizer must be 'byte' or the id of a ready model listed by GET /v1/models (not a hub id)",
        param="tokenizer",
    )
    try:
        model = get_model(session=session, settings=settings, owner=owner, model_id=tokenizer)
    except ApiError:
        raise refused from None
    if model.status != ModelStatus.READY or model.vocab_size is None:
        raise refused
    return model.vocab_size


def require_ready(model: BaseModelInfo) -> None:
    """Jobs and evaluations need a model's weights: a created model still building or failed has none."""
    if model.status == CREATING:
        raise conflict("model_not_ready", f"The model {model.id!r} is still being created", param="model")
    if model.status == ModelStatus.FAILED:
        raise conflict("model_not_ready", f"The model {model.id!r} failed to be created", param="model")


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
