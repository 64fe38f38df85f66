"""Nemotron-H's options over HTTP, and its half-precision training on CPU."""

import pytest
from fastapi.testclient import TestClient

from app.families import FAMILIES

FAMILY = "nemotron_h"
SHAPE = {"family": FAMILY, "d_model": 32, "n_layer": 4, "d_state": 8}


@pytest.mark.parametrize(
    ("options", "param"),
    [
        ({"kv_heads": 2, "attention_heads": 3}, "options.kv_heads"),
        ({"experts": 2, "experts_per_token": 3}, "options.experts_per_token"),
        ({"layer_pattern": "*-E"}, "options.layer_pattern"),  # no Mamba-2 block
        ({"layer_pattern": "MX"}, "options.layer_pattern"),
        ({"mamba_head_dim": 24}, "options.mamba_head_dim"),  # 64 mixer channels
        ({"experts": 1}, "options.experts"),
    ],
)
def test_a_wrong_option_is_400_naming_it(client: TestClient, options: dict, param: str) -> None:
    response = client.post("/v1/models", json={"id": "nh", **SHAPE, "options": options})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert client.get("/v1/models/nh").status_code == 404


def test_the_model_shows_its_options_with_the_defaults_filled(client: TestClient) -> None:
    given = {"layer_pattern": "M*M-ME", "experts": 8}
    assert client.post("/v1/models", json={"id": "nh", **{**SHAPE, "n_layer": 6}, "options": given}).status_code == 200
    shown = client.get("/v1/models/nh").json()["options"]
    defaults = {option.name: option.default for option in FAMILIES[FAMILY].options}
    assert shown == {**defaults, **given} and defaults["experts"] != 8
