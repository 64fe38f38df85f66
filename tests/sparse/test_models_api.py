"""POST /v1/models and jobs on created models: bad configs, structure changes and tenancy over HTTP."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from worker.model_creation import create_model

SC = {"id": "sc-tiny", "family": "mamba", "d_model": 32, "n_layer": 2, "d_state": 8, "ssm_structure": "controllable"}


def upload_text(client: TestClient) -> str:
    response = client.post("/v1/files", files={"file": ("t.jsonl", b'{"text": "def f(): pass"}\n')},
                           data={"purpose": "fine-tune"})  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()["id"]


def built(client: TestClient, settings: Settings, body: dict[str, Any] = SC) -> str:
    """Create a model over HTTP and build it as the worker would."""
    assert client.post("/v1/models", json=body).status_code == 200
    create_model(settings=settings, model_id=body["id"])
    return body["id"]


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"family": "mamba2"}, "ssm_structure"),  # SC is not a Mamba-2 option
        ({"ssm_structure": None, "a_constraint": "stable"}, "a_constraint"),  # ST is not a Mamba option
        ({"ssm_structure": "banded"}, "ssm_structure"),
        ({"family": "mamba2", "ssm_structure": None, "a_constraint": "bounded"}, "a_constraint"),
        ({"d_state": 7}, "d_state"),  # roots come in conjugate pairs
        ({"d_state": 18}, "d_state"),  # above the companion ceiling, though fine for stock Mamba
        ({"ssm_structure": "observable", "d_state": 0}, "d_state"),
        ({"d_model": 40}, "d_model"),
        ({"tokenizer": "no-such-model"}, "tokenizer"),
        ({"id": "../escape"}, "id"),
        ({"d_model": "32"}, "d_model"),
        ({"n_layer": True}, "n_layer"),
        ({"d_state": 8.0}, "d_state"),
        ({"seed": "0"}, "seed"),
    ],
)
def test_bad_configs_are_400_naming_the_field_and_leave_nothing_behind(
    client: TestClient, settings: Settings, model_requests: list[str], change: dict[str, Any], param: str
) -> None:
    response = client.post("/v1/models", json={**SC, **change})

    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert model_requests == []
    assert client.get("/v1/models").json()["data"] == []


def test_stock_mamba_accepts_a_state_the_companion_forms_refuse(client: TestClient, model_requests: list[str]) -> None:
    response = client.post("/v1/models", json={**SC, "ssm_structure": None, "d_state": 18})

    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["ssm_structure"]) == ("creating", "diagonal")
    assert model_requests == ["sc-tiny"]


def test_a_duplicate_id_is_400_and_keeps_the_first_request(client: TestClient, model_requests: list[str]) -> None:
    assert client.post("/v1/models", json=SC).status_code == 200

    response = client.post("/v1/models", json={**SC, "ssm_structure": "observable"})

    assert response.status_code == 400
    assert (response.json()["error"]["code"], response.json()["error"]["param"]) == ("duplicate_model_id", "id")
    assert client.get("/v1/models/sc-tiny").json()["ssm_structure"] == "controllable"
    assert model_requests == ["sc-tiny"]


def test_a_job_may_not_change_the_models_structure(
    client: TestClient, settings: Settings, model_requests: list[str]
) -> None:
    model = built(client, settings)
    file_id = upload_text(client)
    job = {"model": model, "training_file": file_id, "lora": None}

    refused = client.post("/v1/fine_tuning/jobs", json={**job, "ssm_structure": "diagonal"})
    accepted = client.post("/v1/fine_tuning/jobs", json={**job, "ssm_structure": "controllable"})

    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "structure_change_unsupported"
    assert refused.json()["error"]["param"] == "ssm_structure"
    assert accepted.status_code == 200, accepted.text


def test_another_owners_created_model_does_not_exist(
    client: TestClient, make_client: Any, settings: Settings, model_requests: list[str]
) -> None:
    model = built(client, settings)
    bob = make_client("bob")

    job = bob.post("/v1/fine_tuning/jobs", json={"model": model, "training_file": upload_text(bob), "lora": None})

    assert bob.get(f"/v1/models/{model}").status_code == 404
    assert model not in [m["id"] for m in bob.get("/v1/models").json()["data"]]
    assert job.status_code == 404
    assert (job.json()["error"]["code"], job.json()["error"]["param"]) == ("model_not_found", "model")
    assert client.get(f"/v1/models/{model}").json()["status"] == "ready"  # the owner still sees it
