"""The model families this service fine-tunes: the catalog, one module per family here, keyed by the
`model_type` of a model's config.json (which is also a family's name in the API).

Standard library only: the API reads it without torch, and the worker's engine reads the same entries
(each family's torch side is one module of worker/engine/families/, registered under the same key).
"""

from app.families.bamba import BAMBA
from app.families.falcon_h1 import FALCON_H1
from app.families.falcon_mamba import FALCON_MAMBA
from app.families.family import Family
from app.families.granitemoehybrid import GRANITEMOEHYBRID
from app.families.jamba import JAMBA
from app.families.mamba import MAMBA
from app.families.mamba2 import MAMBA2
from app.families.nemotron_h import NEMOTRON_H
from app.families.zamba2 import ZAMBA2

FAMILIES: dict[str, Family] = {
    f.model_type: f
    for f in (
        MAMBA,
        MAMBA2,
        FALCON_MAMBA,
        NEMOTRON_H,
        FALCON_H1,
        JAMBA,
        BAMBA,
        GRANITEMOEHYBRID,
        ZAMBA2,
    )
}
SUPPORTED_MODEL_TYPES = tuple(FAMILIES)
VARIANT_FIELDS = tuple(dict.fromkeys(f.variant_field for f in FAMILIES.values()))

# A hub id whose family we cannot tell yet: any family's targets are accepted (the worker checks them
# against the real model), dropout is checked against every kernel, and the default is what all share.
ANY_FAMILY_TARGETS = tuple(dict.fromkeys(t for f in FAMILIES.values() for t in f.lora_targets))
ANY_FAMILY_UNDROPPABLE = frozenset().union(*(f.undroppable_targets for f in FAMILIES.values()))
ANY_FAMILY_DEFAULTS = tuple(t for t in ANY_FAMILY_TARGETS if all(t in f.default_targets for f in FAMILIES.values()))


def lora_targets(family: str | None) -> tuple[str, ...]:
    """The modules LoRA may target on `family` (None: a family not known yet)."""
    return FAMILIES[family].lora_targets if family else ANY_FAMILY_TARGETS


def undroppable_targets(family: str | None) -> frozenset[str]:
    return FAMILIES[family].undroppable_targets if family else ANY_FAMILY_UNDROPPABLE


def default_lora_targets(family: str | None) -> tuple[str, ...]:
    return FAMILIES[family].default_targets if family else ANY_FAMILY_DEFAULTS


def hub_family(model_id: str) -> str | None:
    """Guess a hub model's family from its name; the worker checks the real config when it loads it."""
    name = model_id.lower()
    # The longest mark found names the family: "mamba-2" is a Mamba-2 model, though it contains "mamba".
    marks = [(len(mark), f.model_type) for f in FAMILIES.values() for mark in f.hub_marks if mark in name]
    return max(marks)[1] if marks else None
