"""Each family added beyond Mamba and Mamba-2, end to end on the embedded default: POST /v1/models creates a
tiny random-init model, a LoRA job with the family's default targets trains every LoRA tensor and lowers the
validation loss, and the published adapter reloads to the trained model's logits; in bf16 and fp16 on the CPU
too, every LoRA tensor trains."""

import math
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from api.factories import upload
from app.archive import unpack
from app.families import FAMILIES
from app.jobs.lifecycle import JobStatus
from app.settings import Settings
from app.storage import storage_from_settings
from e2e.factories import demo_slice
from families.factories import record_attached_lora
from sparse.factories import assert_same_logits, run_keeping_final_model
from worker.engine import trainer
from worker.engine.model_builder import Architecture, create_model_folder
from worker.engine.spec import LoraSpec, Precision, TrainSpec
from worker.evaluation.model import load_for_eval
from worker.model_creation import create_model
from worker.model_store import model_source

ADDED = ["falcon_mamba", "bamba"]
SHAPE = {"d_model": 32, "n_layer": 2, "d_state": 8}


def _file(client: TestClient, name: str, lines: int) -> str:
    response = upload(client, demo_slice(name, lines), filename=name)
    assert response.status_code == 200, response.text
    return response.json()["id"]


@pytest.mark.parametrize("model_type", ADDED)
def test_a_created_model_of_the_family_trains_lora_on_its_default_targets_and_reloads(
    model_type: str,
    client: TestClient,
    settings: Settings,
    model_requests: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    family = FAMILIES[model_type]
    created = client.post("/v1/models", json={"id": "tiny", "family": model_type, **SHAPE})
    assert created.status_code == 200, created.text
    create_model(settings=settings, model_uid=model_requests[0])  # what the Celery task runs
    listed = client.get("/v1/models/tiny").json()
    assert (listed["status"], listed["family"], listed["lora_targets"]) == ("ready", model_type, [*family.lora_targets])

    body = {
        "model": "tiny",
        "training_file": _file(client, "train.jsonl", 48),
        "validation_file": _file(client, "valid.jsonl", 8),
        "precision": "fp32",
        "seed": 0,
        "hyperparameters": {"n_epochs": 1, "batch_size": 4, "learning_rate": 1e-2, "max_seq_len": 48},
    }
    job = client.post("/v1/fine_tuning/jobs", json=body)
    assert job.status_code == 200, job.text

    initial = record_attached_lora(monkeypatch)
    outcome, final = run_keeping_final_model(settings, job.json()["id"], monkeypatch)
    assert outcome["status"] == JobStatus.SUCCEEDED, outcome["error"]
    assert outcome["metrics"]["validation_loss"] < outcome["metrics"]["base_validation_loss"]

    storage = storage_from_settings(settings)
    storage.get_file(outcome["adapter_key"], tmp_path / "adapter.tar.gz")
    adapter = unpack(tmp_path / "adapter.tar.gz", tmp_path / "adapter")
    trained = load_file(str(adapter / "adapter_model.safetensors"))
    targets = {name.split(".lora_")[0].rpartition(".")[2] for name in trained}
    assert targets == set(family.default_targets)
    # AdamW without weight decay moves a tensor only where it got a nonzero gradient.
    assert initial and len(trained) == len(initial)
    unchanged = [name for name, value in initial.items() if torch.equal(trained[name], value)]
    assert unchanged == []

    base = model_source(settings=settings, storage=storage, owner="alice", model_id="tiny")
    reloaded, _, _ = load_for_eval(str(base), adapter=adapter, device="cpu")
    assert final is not None
    assert_same_logits(final, reloaded)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("model_type", ADDED)
def test_a_family_trains_every_lora_tensor_in_half_precision_on_the_cpu(
    model_type: str, precision: Precision, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "model"
    create_model_folder(Architecture(id="tiny", family=model_type, **SHAPE), folder)
    (tmp_path / "train.jsonl").write_bytes(demo_slice("train.jsonl", 12))
    initial = record_attached_lora(monkeypatch)
    spec = TrainSpec(
        model=str(folder),
        train_path=tmp_path / "train.jsonl",
        output_dir=tmp_path / "out",
        precision=precision,
        lora=LoraSpec(target_modules=FAMILIES[model_type].default_targets),
        batch_size=4,
        max_seq_len=32,
        learning_rate=1e-2,
        device="cpu",
    )
    result = trainer.train(spec)

    assert result.metrics["precision"] == precision and math.isfinite(result.metrics["train_loss"])
    assert result.steps > result.metrics["skipped_steps"]
    trained = load_file(str(result.adapter_dir / "adapter_model.safetensors"))
    assert initial and len(trained) == len(initial)
    assert [name for name, value in initial.items() if torch.equal(trained[name].to(value.dtype), value)] == []
