"""Jamba's architecture options over HTTP (a broken one is a 400 naming it, a created model shows them all), and
the stability report of a hybrid: its Mamba layers, the attention layers between them left out."""

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.families.jamba import JAMBA
from worker.engine.model_builder import Architecture, create_model_folder
from worker.evaluation.model import load_for_eval
from worker.evaluation.stability.report import stability_report, token_batch

TINY = {"id": "tiny-jamba", "family": "jamba", "d_model": 32, "n_layer": 2, "d_state": 8}


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"options": {"attention_heads": 3}}, "options.attention_heads"),  # 3 does not divide d_model 32
        ({"options": {"kv_heads": 3}}, "options.kv_heads"),  # nor the 4 heads
        ({"options": {"attention_offset": 2}}, "options.attention_offset"),  # not below the period, 2
        ({"options": {"experts_per_token": 5}}, "options.experts_per_token"),  # more than the 4 experts
        ({"options": {"attention_period": 1}}, "options.attention_period"),  # every layer attention
        ({"n_layer": 1, "options": {"attention_offset": 0}}, "n_layer"),  # its one layer attention
        ({"options": {"attention_layers": 2}}, "options.attention_layers"),
    ],
)
def test_a_jamba_model_with_a_broken_option_is_400_naming_it(
    client: TestClient, model_requests: list[str], change: dict[str, Any], param: str
) -> None:
    response = client.post("/v1/models", json={**TINY, **change})

    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert model_requests == []


def test_a_created_jamba_model_shows_its_options_with_the_defaults_filled(
    client: TestClient, model_requests: list[str]
) -> None:
    response = client.post("/v1/models", json={**TINY, "options": {"experts": 8}})
    assert response.status_code == 200, response.text

    shown = client.get("/v1/models/tiny-jamba").json()["options"]

    assert shown == {option.name: option.default for option in JAMBA.options} | {"experts": 8}
    assert len(model_requests) == 1


def test_a_jamba_models_stability_report_covers_its_mamba_layers(tmp_path: Path) -> None:
    create_model_folder(Architecture(id="m", family="jamba", d_model=32, n_layer=4, d_state=8), tmp_path)
    model, tokenizer, family = load_for_eval(str(tmp_path))
    demo = Path(__file__).resolve().parents[2] / "demo" / "text_valid.jsonl"

    report = stability_report(model, family, token_batch(tokenizer, demo, seq_len=32, n_sequences=2), "bf16")

    # Layers 0 and 2 are Mamba, 1 and 3 attention: λ for the Mamba layers, divergence for every layer.
    assert [layer.layer for layer in report.layers] == [0, 2]
    not_applicable = {(na.layer, na.kind) for na in report.lyapunov_not_applicable}
    assert {(1, "attention"), (3, "attention")} <= not_applicable and all(k != "ssm" for _, k in not_applicable)
    assert len(report.divergence) == 4
    assert report.stable and all(0 < max(d.per_position) < 0.1 for d in report.divergence)
