"""The base models a job may fine-tune: HF-format folders under `models_dir`, plus configured hub ids.

Everything is read from config.json and safetensors headers, never by loading weights.
"""

import json
import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.base_models.architectures import LORA_TARGETS, SUPPORTED_MODEL_TYPES
from app.errors import not_found
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

    @property
    def lora_targets(self) -> tuple[str, ...]:
        return LORA_TARGETS[self.family] if self.family else ()


def list_models(*, settings: Settings) -> list[BaseModelInfo]:
    """Local models first, then hub ids not shadowed by a local folder of the same id."""
    folders = _model_folders(settings.models_dir)
    local = [info for model_id, folder in folders if (info := _read_local(model_id, folder)) is not None]
    local_ids = {info.id for info in local}
    hub = [_hub_model(model_id) for model_id in dict.fromkeys(settings.hub_models) if model_id not in local_ids]
    return local + hub


def get_model(*, settings: Settings, model_id: str) -> BaseModelInfo:
    """The model with this id; raises model_not_found (ids come from the listing, never a joined path)."""
    for info in list_models(settings=settings):
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
        if (child / "config.json").is_file():
            yield child.name, child
            continue
        for grandchild in _subfolders(child):
            if (grandchild / "config.json").is_file():
                yield f"{child.name}/{grandchild.name}", grandchild


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _read_local(model_id: str, folder: Path) -> BaseModelInfo | None:
    config_path = folder / "config.json"
    try:
        config: Any = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # a half-copied or foreign folder is simply not offered
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if model_type not in SUPPORTED_MODEL_TYPES:
        return None
    return BaseModelInfo(
        id=model_id,
        family=model_type,
        created=int(config_path.stat().st_mtime),
        owned_by="local",
        parameters=_count_parameters(folder),
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
