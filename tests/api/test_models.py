"""GET /v1/models: local HF folders and configured hub ids; jobs on hub models."""

import json
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings

from .factories import job_body, write_model

HUB = ["state-spaces/mamba-130m-hf", "someone/mamba2-370m", "someone/other-arch", "mamba-tiny"]


@pytest.fixture
def settings(make_settings: Callable[..., Settings], database_url: str) -> Settings:
    return make_settings(database_url=database_url, hub_models=HUB)


@pytest.fixture
def catalog(settings: Settings, models: list[str]) -> None:
    """The `models` fixture's two models, plus folders that must not be offered."""
    assert settings.models_dir is not None
    write_model(settings.models_dir, "llama", "llama")
    (settings.models_dir / "broken").mkdir()
    (settings.models_dir / "broken" / "config.json").write_text("{not json")
    (settings.models_dir / "empty").mkdir()


def test_models_lists_local_folders_then_hub_ids(client: TestClient, catalog: None) -> None:
    response = client.get("/v1/models")

    assert response.status_code == 200
    listed = {m["id"]: m for m in response.json()["data"]}
    assert list(listed) == ["mamba-tiny", "org/mamba2-tiny", *HUB[:3]]
    assert listed["mamba-tiny"] == {
        "id": "mamba-tiny",
        "object": "model",
        "created": listed["mamba-tiny"]["created"],
        "owned_by": "local",
        "family": "mamba",
        "parameters": 10,
        "lora_targets": ["in_proj", "x_proj", "dt_proj", "out_proj", "embeddings", "lm_head"],
        "status": "ready",
        "error": None,
        "ssm_structure": "diagonal",
        "a_constraint": None,
        "options": None,  # a shared folder's model: its architecture is its config.json
    }
    assert listed["org/mamba2-tiny"]["family"] == "mamba2"
    assert listed["org/mamba2-tiny"]["parameters"] is None
    assert [listed[h]["family"] for h in HUB[:3]] == ["mamba", "mamba2", None]
    assert listed["someone/other-arch"]["lora_targets"] == []
    assert listed["state-spaces/mamba-130m-hf"]["owned_by"] == "state-spaces"


@pytest.mark.parametrize("model_id", ["org/mamba2-tiny", "state-spaces/mamba-130m-hf"])
def test_a_model_is_found_by_an_id_containing_slashes(client: TestClient, catalog: None, model_id: str) -> None:
    response = client.get(f"/v1/models/{model_id}")

    assert response.status_code == 200
    assert response.json()["id"] == model_id


@pytest.mark.parametrize("model_id", ["llama", "broken", "empty", "nope", "org", "org/mamba2-tiny/extra"])
def test_unknown_or_unsupported_models_are_404(client: TestClient, catalog: None, model_id: str) -> None:
    response = client.get(f"/v1/models/{model_id}")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"


def test_a_hub_model_of_unknown_family_trains_the_shared_defaults(client: TestClient, training_file: str) -> None:
    job = client.post("/v1/fine_tuning/jobs", json=job_body(training_file, model="someone/other-arch")).json()

    assert job["lora"]["target_modules"] == ["in_proj", "out_proj"]


def test_a_hub_model_is_checked_against_its_guessed_family(client: TestClient, training_file: str) -> None:
    body = job_body(training_file, model="someone/mamba2-370m", lora={"target_modules": ["dt_proj"]})

    response = client.post("/v1/fine_tuning/jobs", json=body)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_target_module"


def test_unreadable_safetensors_leave_parameters_unknown(client: TestClient, settings: Settings) -> None:
    assert settings.models_dir is not None
    write_model(settings.models_dir, "odd", "mamba")
    (settings.models_dir / "odd" / "model.safetensors").write_bytes(b"\xff" * 8 + json.dumps({}).encode())

    assert client.get("/v1/models/odd").json()["parameters"] is None


def test_a_folder_an_earlier_version_created_for_one_tenant_is_not_shared(
    client: TestClient, settings: Settings
) -> None:
    assert settings.models_dir is not None
    write_model(settings.models_dir, "alices-old-model", "mamba")
    (settings.models_dir / "alices-old-model" / "mambaft_create.json").write_text(json.dumps({"owner": "alice"}))

    assert client.get("/v1/models/alices-old-model").status_code == 404
    assert "alices-old-model" not in [m["id"] for m in client.get("/v1/models").json()["data"]]
