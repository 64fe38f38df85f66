"""Each family added beyond Mamba and Mamba-2, end to end on the embedded default: POST /v1/models creates a
tiny random-init model, a LoRA job with the family's default targets trains every LoRA tensor and lowers the
validation loss, and the published adapter reloads to the trained model's logits; a short bf16 or fp16 run on
the CPU trains every LoRA tensor too."""

import math
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from app.archive import unpack
from app.families import FAMILIES
from app.jobs.lifecycle import JobStatus
from app.settings import Settings
from app.storage import storage_from_settings
from e2e.factories import demo_slice
from families.factories import job_body, record_attached_lora
from sparse.factories import assert_same_logits, run_keeping_final_model
from worker.engine import trainer
from worker.engine.model_builder import Architecture, create_model_folder
from worker.engine.spec import LoraSpec, Precision, TrainSpec
from worker.evaluation.model import load_for_eval
from worker.model_creation import create_model
from worker.model_store import model_source

ADDED = ["falcon_mamba", "nemotron_h", "falcon_h1", "jamba", "bamba", "granitemoehybrid", "zamba2"]
SHAPE = {"d_model": 32, "n_layer": 2, "d_state": 8}
# Families whose blocks hold one kind each need more of them for the default options to give every kind.
N_LAYER = {"nemotron_h": 4}


def _assert_every_tensor_moved(initial: dict[str, torch.Tensor], trained: dict[str, torch.Tensor]) -> None:
    # AdamW without weight decay moves a tensor only where it got a nonzero gradient.
    assert initial and len(trained) == len(initial)
    unchanged = [name for name, value in initial.items() if torch.equal(trained[name], value)]
    assert unchanged == []


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
    shape = {**SHAPE, "n_layer": N_LAYER.get(model_type, SHAPE["n_layer"])}
    created = client.post("/v1/models", json={"id": "tiny", "family": model_type, **shape})
    assert created.status_code == 200, created.text
    create_model(settings=settings, model_uid=model_requests[0])  # what the Celery task runs
    listed = client.get("/v1/models/tiny").json()
    assert (listed["status"], listed["family"], listed["lora_targets"]) == ("ready", model_type, [*family.lora_targets])

    job = client.post("/v1/fine_tuning/jobs", json=job_body(client, train_lines=48, validation_lines=8))
    assert job.status_code == 200, job.text

    initial = record_attached_lora(monkeypatch)
    outcome, final = run_keeping_final_model(settings, job.json()["id"], monkeypatch)
    assert outcome["status"] == JobStatus.SUCCEEDED, outcome["error"]
    assert outcome["metrics"]["validation_loss"] < outcome["metrics"]["base_validation_loss"]

    storage = storage_from_settings(settings)
    storage.get_file(outcome["adapter_key"], tmp_path / "adapter.tar.gz")
    adapter = unpack(tmp_path / "adapter.tar.gz", tmp_path / "adapter")
    trained = load_file(str(adapter / "adapter_model.safetensors"))
    # A parameter target's adapters are stored under its module, one wrapper (".base_layer") per parameter.
    targets = {name.split(".lora_")[0].replace(".base_layer", "").rpartition(".")[2] for name in trained}
    parameter_modules = {t.rpartition(".")[0] for t in family.parameter_targets}
    assert targets == (set(family.default_targets) - family.parameter_targets) | parameter_modules
    _assert_every_tensor_moved(initial, trained)

    base = model_source(settings=settings, storage=storage, owner="alice", model_id="tiny")
    reloaded, _, _ = load_for_eval(str(base), adapter=adapter, device="cpu")
    assert final is not None
    assert_same_logits(final, reloaded)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("model_type", ADDED)
def test_a_created_model_of_the_family_trains_every_lora_tensor_in_half_precision_on_the_cpu(
    model_type: str, precision: Precision, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shape = {**SHAPE, "n_layer": N_LAYER.get(model_type, SHAPE["n_layer"])}
    create_model_folder(Architecture(id="tiny", family=model_type, **shape), tmp_path / "model")
    (tmp_path / "train.jsonl").write_bytes(demo_slice("train.jsonl", 12))
    initial = record_attached_lora(monkeypatch)
    spec = TrainSpec(
        model=str(tmp_path / "model"),
        train_path=tmp_path / "train.jsonl",
        output_dir=tmp_path / "out",
        precision=precision,
        lora=LoraSpec.for_family(model_type),
        batch_size=4,
        max_seq_len=32,
        learning_rate=1e-2,
        device="cpu",
    )

    result = trainer.train(spec)

    assert math.isfinite(result.metrics["train_loss"]) and result.metrics["skipped_steps"] < result.steps
    _assert_every_tensor_moved(initial, load_file(str(result.adapter_dir / "adapter_model.safetensors")))
