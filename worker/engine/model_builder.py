"""A randomly initialized base model from an architecture request (the paper trains from scratch).

The request is what `POST /v1/models` stored; everything is a pure function of it (seed included), so
two builds write identical weights. The variant fields land in config.json, so the model reloads as
what it is (sparse_mamba.py reads them back).
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PretrainedConfig

from app.families import FAMILIES
from worker.engine.families import family_engine
from worker.engine.mamba_forward import install_forwards
from worker.engine.tiny_model import byte_tokenizer, family_config


@dataclass(frozen=True)
class Architecture:
    id: str
    family: str  # a model_type of the family catalog
    d_model: int
    n_layer: int
    d_state: int
    tokenizer: str = "byte"  # "byte", or the id of a model whose tokenizer is copied
    ssm_structure: str = "diagonal"  # Mamba only
    a_constraint: str = "none"  # Mamba-2 only
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # a hybrid's architecture options (app/families/)


def build_config(arch: Architecture, vocab_size: int, eos_id: int) -> PretrainedConfig:
    family = FAMILIES[arch.family]
    shape = family.shape(
        d_model=arch.d_model,
        n_layer=arch.n_layer,
        d_state=arch.d_state,
        variant=getattr(arch, family.variant_field),
        options=arch.options,
    )
    return family_config(family_engine(arch.family), shape, vocab_size, eos_id)


def create_model_folder(arch: Architecture, folder: Path, tokenizer_folder: Path | str | None = None) -> int:
    """Write the model and its tokenizer into `folder` (HF format); returns the parameter count."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder) if tokenizer_folder else byte_tokenizer()
    config = build_config(arch, len(tokenizer), tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG untouched
        torch.manual_seed(arch.seed)
        model = install_forwards(family_engine(arch.family).causal_lm(config))  # applies the SC/SO structure
    model.config.use_cache = True  # install_forwards turns it off for training; keep the saved default
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())
