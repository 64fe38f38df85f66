"""The torch side of each model family, one module each, registered by the `model_type` its catalog entry
(app/families/) has: a family is that entry and its module here."""

from typing import Any

from torch import nn

from worker.engine.families import bamba, falcon_mamba, mamba, mamba2
from worker.engine.families.family import FamilyEngine

ENGINES: dict[str, FamilyEngine] = {
    engine.model_type: engine for engine in (mamba.ENGINE, mamba2.ENGINE, falcon_mamba.ENGINE, bamba.ENGINE)
}

__all__ = [
    "ENGINES",
    "FamilyEngine",
    "backbone_engine",
    "engine_of",
    "family_engine",
    "mixer_engine",
    "ssm_mixers",
]


def family_engine(model_type: str) -> FamilyEngine:
    """The engine of `model_type`; ValueError naming the supported ones otherwise."""
    engine = ENGINES.get(model_type)
    if engine is None:
        raise ValueError(f"model_type {model_type!r} is not supported; expected one of {tuple(ENGINES)}")
    return engine


def engine_of(model: nn.Module) -> FamilyEngine:
    """The engine of a (possibly LoRA-wrapped) causal LM, by its config's model_type."""
    return family_engine(model.config.model_type)


def mixer_engine(module: nn.Module) -> FamilyEngine | None:
    """The engine whose SSM mixer `module` is, or None."""
    return next((e for e in ENGINES.values() if isinstance(module, e.mixers)), None)


def backbone_engine(module: nn.Module) -> FamilyEngine | None:
    """The engine whose fused layer loop replaces `module`'s forward, or None."""
    return next((e for e in ENGINES.values() if e.fused_backbone and isinstance(module, e.fused_backbone)), None)


def ssm_mixers(model: nn.Module) -> list[Any]:
    """The SSM mixers of `model`, in layer order."""
    return [m for m in model.modules() if mixer_engine(m) is not None]
