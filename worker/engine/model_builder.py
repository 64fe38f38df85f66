"""A randomly initialized base model from an architecture request (the paper trains from scratch).

The request is what `POST /v1/models` stored; everything is a pure function of it (seed included), so
two builds write identical weights. The variant fields land in config.json, so the model reloads as
what it is (sparse_mamba.py reads them back).
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

from worker.engine.mamba_forward import install_forwards
from worker.engine.tiny_model import byte_tokenizer

# What the reference Mamba-2 checkpoints use, and so what bench/step.py measures.
MAMBA2_HEAD_DIM = 64
MAMBA2_CHUNK_SIZE = 256


@dataclass(frozen=True)
class Architecture:
    id: str
    family: str  # "mamba" | "mamba2"
    d_model: int
    n_layer: int
    d_state: int
    tokenizer: str = "byte"  # "byte", or the id of a model whose tokenizer is copied
    ssm_structure: str = "diagonal"  # Mamba only
    a_constraint: str = "none"  # Mamba-2 only
    seed: int = 0


def build_config(arch: Architecture, vocab_size: int, eos_id: int) -> MambaConfig | Mamba2Config:
    vocab = -(-vocab_size // 8) * 8  # kernel-friendly embedding shapes, as tiny_model does
    ids = {"eos_token_id": eos_id, "pad_token_id": eos_id, "bos_token_id": eos_id}
    common = {
        "vocab_size": vocab,
        "hidden_size": arch.d_model,
        "num_hidden_layers": arch.n_layer,
        "state_size": arch.d_state,
        "expand": 2,
        **ids,
    }
    if arch.family == "mamba":
        return MambaConfig(**common, ssm_structure=arch.ssm_structure)
    d_inner = 2 * arch.d_model
    return Mamba2Config(
        **common,
        num_heads=d_inner // MAMBA2_HEAD_DIM,
        head_dim=MAMBA2_HEAD_DIM,
        n_groups=1,
        chunk_size=MAMBA2_CHUNK_SIZE,
        tie_word_embeddings=True,
        a_constraint=arch.a_constraint,
    )


def create_model_folder(arch: Architecture, folder: Path, tokenizer_folder: Path | str | None = None) -> int:
    """Write the model and its tokenizer into `folder` (HF format); returns the parameter count."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder) if tokenizer_folder else byte_tokenizer()
    config = build_config(arch, len(tokenizer), tokenizer.eos_token_id)
    model_class = MambaForCausalLM if arch.family == "mamba" else Mamba2ForCausalLM
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG untouched
        torch.manual_seed(arch.seed)
        model = install_forwards(model_class(config))  # applies the SC/SO structure
    model.config.use_cache = True  # install_forwards turns it off for training; keep the saved default
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())
