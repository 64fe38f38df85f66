"""A hybrid's layers by kind, read generically from its engine's `layer_parts`: a tiny Mamba whose engine declares
some blocks attention, MLP or experts stands in for a hybrid. The stability report gives λ for the SSM layers,
lists the others as not applicable and the divergence of every layer; a job counts its adapted layers by kind."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from worker.engine.adapted_layers import adapted_layers, describe
from worker.engine.families import ENGINES
from worker.engine.lora_fold import attach_lora
from worker.engine.spec import LoraSpec
from worker.evaluation.model import load_for_eval
from worker.evaluation.stability.lyapunov import lyapunov_exponents, not_applicable
from worker.evaluation.stability.report import stability_report, token_batch

DEMO = Path(__file__).resolve().parents[2] / "demo"


@pytest.fixture
def hybrid(tiny_mamba: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[nn.Module, torch.Tensor]:
    """The tiny Mamba (4 layers) seen as a hybrid: ssm | attention | ssm + moe | mlp; and a token batch."""
    model, tokenizer, _ = load_for_eval(str(tiny_mamba))
    blocks = model.backbone.layers
    declared = {
        id(blocks[1]): {"attention": blocks[1].mixer},
        id(blocks[2]): {"ssm": blocks[2].mixer, "moe": blocks[2].norm},
        id(blocks[3]): {"mlp": blocks[3].mixer},
    }
    engine = ENGINES["mamba"]
    parts = dataclasses.replace(engine, layer_parts=lambda block: declared.get(id(block)) or engine.layer_parts(block))
    monkeypatch.setitem(ENGINES, "mamba", parts)
    return model, token_batch(tokenizer, DEMO / "text_valid.jsonl", seq_len=32, n_sequences=2)


def test_a_hybrids_stability_report_has_lambda_per_ssm_layer_and_divergence_per_layer(
    hybrid: tuple[nn.Module, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tokens = hybrid
    report = json.loads(json.dumps(stability_report(model, "mamba", tokens, "bf16").to_dict()))
    assert [layer["layer"] for layer in report["layers"]] == [0, 2]
    assert report["lyapunov_not_applicable"] == [
        {"layer": 1, "kind": "attention"},
        {"layer": 2, "kind": "moe"},
        {"layer": 3, "kind": "mlp"},
    ]
    divergence = report["divergence"]
    assert [d["kinds"] for d in divergence] == [["ssm"], ["attention"], ["ssm", "moe"], ["mlp"]]
    assert all(len(d["per_position"]) == 32 and 0 < max(d["per_position"]) < 0.1 for d in divergence)
    # The λ of an SSM layer is its own, whatever the other layers are.
    monkeypatch.undo()
    pure = lyapunov_exponents(model, tokens)
    assert not_applicable(model) == [] and len(pure) == 4
    assert [layer["lyapunov_exponent"] for layer in report["layers"]] == [pure[i].lyapunov_exponent for i in (0, 2)]


def test_a_job_counts_the_layers_its_adapter_reaches_by_kind(hybrid: tuple[nn.Module, torch.Tensor]) -> None:
    model, _ = hybrid
    counts = adapted_layers(attach_lora(model, LoraSpec(target_modules=("in_proj",))))
    assert counts == {
        "ssm": {"adapted": 2, "layers": 2},
        "attention": {"adapted": 1, "layers": 1},
        "mlp": {"adapted": 1, "layers": 1},
        "moe": {"adapted": 0, "layers": 1},  # its part (a norm here) has no target
    }
    assert describe(counts) == "LoRA on 2/2 ssm layers, 1/1 attention layers, 1/1 mlp layers, 0/1 moe layers"
