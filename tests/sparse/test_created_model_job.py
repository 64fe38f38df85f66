"""A model created over HTTP trains in a full fine-tuning job and reloads from its archive as it ended.

POST /v1/models -> the worker's create function -> GET lists it ready with the expected size -> a full
fine-tuning job over the API on stdlib code -> the in-process job runner (as tests/e2e runs jobs) ->
the adapter archive reloads to the trained model's logits, and the stability report has the SC fields.
"""

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.archive import unpack
from app.jobs.keys import stability_key
from app.jobs.lifecycle import JobStatus
from app.settings import Settings
from app.storage import storage_from_settings
from worker.engine.model_builder import Architecture, create_model_folder
from worker.evaluation.model import load_for_eval
from worker.model_creation import create_model
from worker.model_store import model_source

from .factories import assert_same_logits, corpus_sample, run_keeping_final_model

SC = {"id": "sc-tiny", "family": "mamba", "d_model": 32, "n_layer": 2, "d_state": 8, "ssm_structure": "controllable"}


def upload(client: TestClient, path: Path) -> str:
    response = client.post("/v1/files", files={"file": (path.name, path.read_bytes())}, data={"purpose": "fine-tune"})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def test_created_sc_model_trains_in_a_job_and_reloads_to_the_same_logits(
    client: TestClient,
    settings: Settings,
    model_requests: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert client.post("/v1/models", json=SC).json()["status"] == "creating"
    assert len(model_requests) == 1
    create_model(settings=settings, model_uid=model_requests[0])  # what the Celery task runs

    listed = {m["id"]: m for m in client.get("/v1/models").json()["data"]}["sc-tiny"]
    stock = create_model_folder(Architecture(**{**SC, "ssm_structure": "diagonal"}), tmp_path / "stock")
    d_inner = 2 * SC["d_model"]
    assert (listed["status"], listed["ssm_structure"]) == ("ready", "controllable")
    assert listed["parameters"] == stock - SC["n_layer"] * d_inner * SC["d_state"]  # the B rows of x_proj

    train_path, validation_path = corpus_sample(tmp_path / "corpus", files=10, chars=300)
    body = {
        "model": "sc-tiny",
        "training_file": upload(client, train_path),
        "lora": None,
        "precision": "fp32",
        "validation_file": upload(client, validation_path),
        "ssm_structure": "controllable",
        "seed": 0,
        "hyperparameters": {"n_epochs": 1, "batch_size": 4, "learning_rate": 3e-3, "max_seq_len": 64},
    }
    created = client.post("/v1/fine_tuning/jobs", json=body)
    assert created.status_code == 200, created.text
    job_id = created.json()["id"]

    outcome, final = run_keeping_final_model(settings, job_id, monkeypatch)
    assert outcome["status"] == JobStatus.SUCCEEDED, outcome["error"]
    assert outcome["metrics"]["validation_loss"] < outcome["metrics"]["base_validation_loss"]
    storage = storage_from_settings(settings)
    storage.get_file(outcome["adapter_key"], tmp_path / "model.tar.gz")
    folder = unpack(tmp_path / "model.tar.gz", tmp_path / "unpacked")  # full fine-tuning: a whole model
    base = model_source(settings=settings, storage=storage, owner="alice", model_id="sc-tiny")
    reloaded, _, _ = load_for_eval(str(base), adapter=folder, device="cpu")
    assert final is not None
    assert_same_logits(final, reloaded)
    assert reloaded.config.ssm_structure == "controllable"

    storage.get_file(stability_key(job_id, "json"), tmp_path / "stability.json")
    tuned = json.loads((tmp_path / "stability.json").read_text())["fine_tuned"]
    assert tuned["stable"] and tuned["max_lyapunov_exponent"] < 0
    layers = [(s["layer"], s["variant"], s["rank"]) for s in tuned["structure"]]
    assert layers == [(0, "controllable", SC["d_state"]), (1, "controllable", SC["d_state"])]
    assert all(s["max_real_eigenvalue"] < 0 for s in tuned["structure"])
