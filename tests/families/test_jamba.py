"""Jamba's architecture options over HTTP: a broken one is a 400 naming it, a created model shows them all."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.families.jamba import JAMBA

TINY = {"id": "tiny-jamba", "family": "jamba", "d_model": 32, "n_layer": 2, "d_state": 8}


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"options": {"num_attention_heads": 3}}, "options.num_attention_heads"),  # 3 does not divide d_model 32
        ({"options": {"num_key_value_heads": 3}}, "options.num_key_value_heads"),  # nor the 4 heads
        ({"options": {"attn_layer_offset": 2}}, "options.attn_layer_offset"),  # not below the period, 2
        ({"options": {"num_experts_per_tok": 5}}, "options.num_experts_per_tok"),  # more than the 4 experts
        ({"options": {"attn_layer_period": 1}}, "options.attn_layer_period"),  # every layer attention
        ({"n_layer": 1, "options": {"attn_layer_offset": 0}}, "n_layer"),  # its one layer attention
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
    response = client.post("/v1/models", json={**TINY, "options": {"num_experts": 8}})
    assert response.status_code == 200, response.text

    shown = client.get("/v1/models/tiny-jamba").json()["options"]

    assert shown == {option.name: option.default for option in JAMBA.options} | {"num_experts": 8}
    assert len(model_requests) == 1
