"""The torch side of each model family, one module each, registered by the `model_type` its catalog entry
(app/families/) has: a family is that entry and its module here."""

from collections.abc import Callable
from typing import Any

from torch import nn

from worker.engine.families import (
    bamba,
    falcon_h1,
    falcon_mamba,
    granitemoehybrid,
    jamba,
    mamba,
    mamba2,
    nemotron_h,
    zamba2,
)
from worker.engine.families.family import FamilyEngine

ENGINES: dict[str, FamilyEngine] = {
    engine.model_type: engine
    for engine in (
        mamba.ENGINE,
        mamba2.ENGINE,
        falcon_mamba.ENGINE,
        nemotron_h.ENGINE,
        falcon_h1.ENGINE,
        jamba.ENGINE,
        bamba.ENGINE,
        granitemoehybrid.ENGINE,
        zamba2.ENGINE,
    )
}

__all__ = [
    "ENGINES",
    "FamilyEngine",
    "backbone_engine",
    "block_forward",
    "engine_of",
    "family_engine",
    "layer_kinds",
    "mixer_engine",
    "model_layers",
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


def layer_kinds(model: nn.Module) -> set[str]:
    """The kinds of part (LAYER_KINDS) the blocks of a (possibly LoRA-wrapped) causal LM hold."""
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    engine = engine_of(lm)
    return {kind for block in engine.layers(engine.backbone(lm)) for kind in engine.layer_parts(block)}


def mixer_engine(module: nn.Module) -> FamilyEngine | None:
    """The engine whose SSM mixer `module` is, or None."""
    return next((e for e in ENGINES.values() if isinstance(module, e.mixers)), None)


def backbone_engine(module: nn.Module) -> FamilyEngine | None:
    """The engine whose fused layer loop replaces `module`'s forward, or None."""
    return next((e for e in ENGINES.values() if e.fused_backbone and isinstance(module, e.fused_backbone)), None)


def block_forward(module: nn.Module) -> Callable[..., Any] | None:
    """The forward an engine gives `module`, a block of its model's own loop, in place of the block's own; or None."""
    return next(
        (e.block_forward[1] for e in ENGINES.values() if e.block_forward and isinstance(module, e.block_forward[0])),
        None,
    )


def ssm_mixers(model: nn.Module) -> list[Any]:
    """The SSM mixers of `model`, in layer order."""
    return [m for m in model.modules() if mixer_engine(m) is not None]


def model_layers(model: nn.Module) -> list[tuple[nn.Module, dict[str, nn.Module]]]:
    """Each block of `model` (a causal LM, LoRA-wrapped or not) with its parts by kind, in layer order."""
    engine = engine_of(model)
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return [(block, engine.layer_parts(block)) for block in engine.layers(engine.backbone(lm))]
