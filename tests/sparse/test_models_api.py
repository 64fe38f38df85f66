"""POST /v1/models and jobs on created models: bad configs, structure changes and tenancy over HTTP."""

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.base_models.parameters import BYTE_VOCAB_SIZE, parameter_count
from app.settings import Settings
from worker import model_creation
from worker.model_creation import create_model

SC = {"id": "sc-tiny", "family": "mamba", "d_model": 32, "n_layer": 2, "d_state": 8, "ssm_structure": "controllable"}
BAMBA = {"family": "bamba", "ssm_structure": None}  # over SC: a hybrid family with options


def upload_text(client: TestClient) -> str:
    response = client.post(
        "/v1/files", files={"file": ("t.jsonl", b'{"text": "def f(): pass"}\n')}, data={"purpose": "fine-tune"}
    )
    assert response.status_code == 200, response.text
    return response.json()["id"]


def built(client: TestClient, settings: Settings, requests: list[str], body: dict[str, Any] = SC) -> str:
    """Create a model over HTTP and build it as the worker would."""
    assert client.post("/v1/models", json=body).status_code == 200
    create_model(settings=settings, model_uid=requests[-1])
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
        ({"family": "mamba2", "ssm_structure": None, "d_model": 48}, "d_model"),  # heads of 64 channels
        ({"tokenizer": "no-such-model"}, "tokenizer"),
        ({"id": "../escape"}, "id"),
        ({"d_model": "32"}, "d_model"),
        ({"n_layer": True}, "n_layer"),
        ({"d_state": 8.0}, "d_state"),
        ({"seed": "0"}, "seed"),
        ({"options": {"attention_layers": "1"}}, "options.attention_layers"),  # Mamba has no hybrid layers
        ({"options": {"x": 1}}, "options.x"),
        ({**BAMBA, "options": {"layer_pattern": "M-"}}, "options.layer_pattern"),  # Bamba's layers are M or *
        ({**BAMBA, "options": {"layer_pattern": "*"}}, "options.layer_pattern"),  # no Mamba-2 layer
        ({**BAMBA, "options": {"attention_heads": 3}}, "options.attention_heads"),  # 32 channels
        ({**BAMBA, "options": {"kv_heads": 3}}, "options.kv_heads"),
        ({**BAMBA, "options": {"mamba_head_dim": 0}}, "options.mamba_head_dim"),
        ({**BAMBA, "options": {"mamba_groups": 3}}, "options.mamba_groups"),  # 4 heads
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


def test_a_hybrid_shows_its_options_with_the_defaults_filled(client: TestClient, model_requests: list[str]) -> None:
    response = client.post("/v1/models", json={**SC, **BAMBA, "options": {"kv_heads": 1, "layer_pattern": "*M"}})

    assert response.status_code == 200, response.text
    shown = client.get("/v1/models/sc-tiny").json()
    filled = {"layer_pattern": "*M", "attention_heads": 4, "kv_heads": 1, "mlp_size": 64, "mamba_head_dim": 16}
    filled |= {"mamba_groups": 1}
    assert (shown["family"], shown["options"]) == ("bamba", filled)
    shape = {k: SC[k] for k in ("d_model", "n_layer", "d_state")}
    counted = parameter_count(family="bamba", variant="none", vocab_size=BYTE_VOCAB_SIZE, options=filled, **shape)
    assert shown["parameters"] == counted
    assert len(model_requests) == 1


def test_stock_mamba_accepts_a_state_the_companion_forms_refuse(client: TestClient, model_requests: list[str]) -> None:
    response = client.post("/v1/models", json={**SC, "ssm_structure": None, "d_state": 18})

    assert response.status_code == 200, response.text
    assert (response.json()["status"], response.json()["ssm_structure"]) == ("creating", "diagonal")
    assert len(model_requests) == 1


def test_a_duplicate_id_is_400_and_keeps_the_first_request(client: TestClient, model_requests: list[str]) -> None:
    assert client.post("/v1/models", json=SC).status_code == 200

    response = client.post("/v1/models", json={**SC, "ssm_structure": "observable"})

    assert response.status_code == 400
    assert (response.json()["error"]["code"], response.json()["error"]["param"]) == ("duplicate_model_id", "id")
    assert client.get("/v1/models/sc-tiny").json()["ssm_structure"] == "controllable"
    assert len(model_requests) == 1


@pytest.mark.parametrize("settings", [{"hub_models": ["hub-mamba"]}], indirect=True)
@pytest.mark.parametrize("shared", ["folder-mamba", "hub-mamba"])
def test_the_id_of_a_shared_model_is_a_duplicate(
    client: TestClient, settings: Settings, model_requests: list[str], shared: str
) -> None:
    assert settings.models_dir is not None
    (settings.models_dir / "folder-mamba").mkdir(parents=True)
    (settings.models_dir / "folder-mamba" / "config.json").write_text(json.dumps({"model_type": "mamba"}))

    response = client.post("/v1/models", json={**SC, "id": shared})

    assert (response.status_code, response.json()["error"]["code"]) == (400, "duplicate_model_id")
    assert model_requests == []


def test_a_job_may_not_change_the_models_structure(
    client: TestClient, settings: Settings, model_requests: list[str]
) -> None:
    model = built(client, settings, model_requests)
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
    model = built(client, settings, model_requests)
    bob = make_client("bob")

    job = bob.post("/v1/fine_tuning/jobs", json={"model": model, "training_file": upload_text(bob), "lora": None})

    assert bob.get(f"/v1/models/{model}").status_code == 404
    assert model not in [m["id"] for m in bob.get("/v1/models").json()["data"]]
    assert job.status_code == 404
    assert (job.json()["error"]["code"], job.json()["error"]["param"]) == ("model_not_found", "model")
    assert client.get(f"/v1/models/{model}").json()["status"] == "ready"  # the owner still sees it


def test_a_tokenizer_naming_a_path_or_another_owners_model_gets_the_answer_of_a_missing_one(
    client: TestClient,
    make_client: Callable[..., TestClient],
    settings: Settings,
    model_requests: list[str],
    tmp_path: Path,
) -> None:
    outside = tmp_path / "elsewhere" / "secret-model"  # a model folder on the API host, outside models_dir
    outside.mkdir(parents=True)
    (outside / "config.json").write_text(json.dumps({"model_type": "mamba", "vocab_size": 264}))
    (outside / "tokenizer.json").write_text("{}")
    assert settings.models_dir is not None
    settings.models_dir.mkdir(parents=True, exist_ok=True)
    bobs = built(make_client("bob"), settings, model_requests, {**SC, "id": "bobs-model"})
    probes = [
        str(outside),
        os.path.relpath(outside, settings.models_dir),
        bobs,  # exist, but not for Alice
        str(tmp_path / "nothing"),
        "../nothing",
        "no-such-model",  # exist nowhere
    ]

    answers = [client.post("/v1/models", json={**SC, "tokenizer": tokenizer}) for tokenizer in probes]

    assert [a.status_code for a in answers] == [400] * len(probes), [a.text for a in answers]
    assert len({json.dumps(a.json(), sort_keys=True) for a in answers}) == 1  # nothing tells them apart
    assert answers[0].json()["error"]["param"] == "tokenizer"
    assert len(model_requests) == 1  # Bob's model only
    assert client.get("/v1/models").json()["data"] == []


def test_the_tokenizer_may_be_a_shared_model_or_the_callers_own_ready_one(
    client: TestClient, settings: Settings, model_requests: list[str]
) -> None:
    assert settings.models_dir is not None
    shared = settings.models_dir / "shared-tok"
    shared.mkdir(parents=True)
    (shared / "config.json").write_text(json.dumps({"model_type": "mamba", "vocab_size": 50280}))
    pending = client.post("/v1/models", json={**SC, "id": "pending"})
    own = built(client, settings, model_requests)

    on_pending = client.post("/v1/models", json={**SC, "id": "on-pending", "tokenizer": "pending"})
    on_shared = client.post("/v1/models", json={**SC, "id": "on-shared", "tokenizer": "shared-tok"})
    on_own = client.post("/v1/models", json={**SC, "id": "on-own", "tokenizer": own})

    assert pending.status_code == 200
    assert (on_pending.status_code, on_pending.json()["error"]["param"]) == (400, "tokenizer")
    assert on_shared.status_code == 200, on_shared.text
    shape = {k: SC[k] for k in ("d_model", "n_layer", "d_state")}
    assert on_shared.json()["parameters"] == parameter_count(
        family="mamba", variant="controllable", vocab_size=50280, **shape
    )
    assert on_own.status_code == 200, on_own.text
    create_model(settings=settings, model_uid=model_requests[-1])  # the worker fetches the tokenizer's model
    assert client.get("/v1/models/on-own").json()["status"] == "ready"


@pytest.mark.parametrize("settings", [{"max_model_parameters": 25_000}], indirect=True)
def test_a_model_beyond_the_parameter_cap_is_400_naming_its_size_before_anything_is_queued(
    client: TestClient, model_requests: list[str]
) -> None:
    stock = {**SC, "ssm_structure": None}  # 25,312 parameters; SC drops 1,024 of them (24,288)
    huge = {**stock, "id": "huge", "d_model": 8192, "n_layer": 128, "d_state": 256}  # ~55B

    refused = [client.post("/v1/models", json=body) for body in (stock, huge)]
    accepted = client.post("/v1/models", json=SC)

    for response in refused:
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert (error["code"], error["param"]) == ("model_too_large", "d_model")
        assert all(field in error["message"] for field in ("d_model", "n_layer", "d_state", "25,000"))
    assert "25,312" in refused[0].json()["error"]["message"]
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["parameters"] == 24_288
    assert len(model_requests) == 1
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["sc-tiny"]


def test_the_default_cap_refuses_a_54b_model(client: TestClient, model_requests: list[str]) -> None:
    huge = {**SC, "ssm_structure": None, "d_model": 8192, "n_layer": 128, "d_state": 256}

    response = client.post("/v1/models", json=huge)

    assert (response.status_code, response.json()["error"]["code"]) == (400, "model_too_large")
    assert model_requests == []


def test_the_owner_evaluates_her_created_model(
    app: FastAPI,
    client: TestClient,
    make_client: Callable[..., TestClient],
    settings: Settings,
    model_requests: list[str],
) -> None:
    body = {"model": "sc-tiny", "tasks": ["lookup"], "shots": [0]}
    assert client.post("/v1/models", json=SC).status_code == 200

    while_creating = client.post("/v1/evaluations", json=body)
    create_model(settings=settings, model_uid=model_requests[0])
    evaluation = client.post("/v1/evaluations", json=body)
    by_bob = make_client("bob").post("/v1/evaluations", json=body)

    assert (while_creating.status_code, while_creating.json()["error"]["code"]) == (409, "model_not_ready")
    assert evaluation.status_code == 200, evaluation.text
    assert evaluation.json()["model"] == "sc-tiny"
    assert (by_bob.status_code, by_bob.json()["error"]["code"]) == (404, "model_not_found")


def test_a_failed_build_shows_failed_with_its_error_and_jobs_on_it_are_refused(
    client: TestClient, settings: Settings, model_requests: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_memory(*args: Any) -> int:
        raise MemoryError("cannot allocate the embeddings")

    monkeypatch.setattr(model_creation, "create_model_folder", out_of_memory)
    assert client.post("/v1/models", json=SC).status_code == 200
    create_model(settings=settings, model_uid=model_requests[0])

    model = client.get("/v1/models/sc-tiny").json()
    job = client.post("/v1/fine_tuning/jobs", json={"model": "sc-tiny", "training_file": upload_text(client)})

    assert (model["status"], model["error"]["code"]) == ("failed", "model_creation_failed")
    assert "cannot allocate the embeddings" in model["error"]["message"]
    assert (job.status_code, job.json()["error"]["code"]) == (409, "model_not_ready")
