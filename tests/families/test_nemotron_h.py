"""Nemotron-H's options over HTTP, and what a job on it may ask of its experts."""

import pytest
from fastapi.testclient import TestClient

from app.families import FAMILIES
from app.settings import Settings
from families.factories import job_body
from worker.model_creation import create_model

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


def test_dropout_on_the_experts_is_400_naming_lora_dropout(
    client: TestClient, settings: Settings, model_requests: list[str]
) -> None:
    assert client.post("/v1/models", json={"id": "nh", **SHAPE}).status_code == 200
    create_model(settings=settings, model_uid=model_requests[0])
    lora = {"dropout": 0.1, "target_modules": ["q_proj", "experts.up_proj"]}
    body = job_body(client, train_lines=4, model="nh", lora=lora)

    response = client.post("/v1/fine_tuning/jobs", json=body)

    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "lora.dropout"
    assert "experts.up_proj" in response.json()["error"]["message"]
