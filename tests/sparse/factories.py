"""Tiny Sparse Mamba models, a small stdlib corpus sample, and a created model's job run in process."""

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM, PreTrainedModel

from app.db import session_scope
from app.jobs.models import Job
from app.settings import Settings
from worker.engine import trainer
from worker.engine.mamba_forward import install_forwards
from worker.engine.stdlib_corpus import build_corpus
from worker.job_runner import run_job

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


def run_keeping_final_model(
    settings: Settings, job_id: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[str, Any], torch.nn.Module | None]:
    """Run a job in process, as a worker would: its row's status, error, adapter_key and metrics, and the
    final in-memory model (the trainer validates last with it; None if it never validated)."""
    finals: list[torch.nn.Module] = []
    real_evaluate = trainer.evaluate

    def evaluate(model: torch.nn.Module, *args: Any) -> float:
        finals.append(model)
        return real_evaluate(model, *args)

    monkeypatch.setattr(trainer, "evaluate", evaluate)
    run_job(settings=settings, job_id=job_id)
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        outcome = {"status": job.status, "error": job.error, "adapter_key": job.adapter_key, "metrics": job.metrics}
    return outcome, finals[-1] if finals else None


def assert_same_logits(expected: torch.nn.Module, got: torch.nn.Module) -> None:
    """Same fp32 weights through the same forward on the same CPU: anything above rounding is a wrong load."""
    ids = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, have = expected.eval()(ids).logits, got.eval()(ids).logits
    assert torch.allclose(have, want, rtol=0, atol=1e-5), (have - want).abs().max()
