"""Tiny Sparse Mamba models and a small stdlib corpus sample for the tests."""

import json
from pathlib import Path

import torch
from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM, PreTrainedModel

from worker.engine.mamba_forward import install_forwards
from worker.engine.stdlib_corpus import build_corpus

D_MODEL, N_LAYER, D_STATE, VOCAB = 32, 2, 8, 264


def tiny(structure: str = "diagonal", *, d_state: int = D_STATE, seed: int = 0) -> PreTrainedModel:
    """A random Mamba of the given ssm_structure with our forwards (SC/SO structure applied)."""
    config = MambaConfig(
        vocab_size=VOCAB, hidden_size=D_MODEL, num_hidden_layers=N_LAYER, state_size=d_state, ssm_structure=structure
    )
    torch.manual_seed(seed)
    return install_forwards(MambaForCausalLM(config))


def tiny_mamba2(constraint: str = "none", seed: int = 0) -> PreTrainedModel:
    config = Mamba2Config(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        num_hidden_layers=N_LAYER,
        state_size=D_STATE,
        expand=2,
        num_heads=4,
        head_dim=16,
        n_groups=1,
        chunk_size=16,
        a_constraint=constraint,
    )
    torch.manual_seed(seed)
    return install_forwards(Mamba2ForCausalLM(config))


def corpus_sample(folder: Path, *, files: int = 40, chars: int = 1500) -> tuple[Path, Path]:
    """train/validation JSONL of the stdlib corpus, each file cut to `chars` characters (seconds to train)."""
    corpus = build_corpus(folder / "full", validation_fraction=0.2, max_files=files)
    out = []
    for path in (corpus.train, corpus.validation):
        lines = [json.dumps({"text": json.loads(line)["text"][:chars]}) for line in path.read_text().splitlines()]
        (folder / path.name).write_text("\n".join(lines) + "\n")
        out.append(folder / path.name)
    return out[0], out[1]
