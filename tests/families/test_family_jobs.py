"""Every family end to end over HTTP on the embedded default, in every precision: POST /v1/models creates a tiny
random-init model, a LoRA job with the family's default targets trains every LoRA tensor and lowers the
validation loss, the adapter downloaded from the API reloads to the trained model's logits (and so do the merged
weights an fp32 job exports), and the job's stability report gives λ for each SSM layer and the divergence of
every layer."""

from pathlib import Path
from typing import get_args

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import load_file
from torch import nn

from app.archive import unpack
from app.families import FAMILIES
from app.jobs.lifecycle import JobStatus
from app.settings import Settings
from app.storage import storage_from_settings
from families.factories import job_body, record_attached_lora
from sparse.factories import assert_same_logits, run_keeping_final_model
from worker.engine.spec import Precision
from worker.evaluation.model import load_for_eval
from worker.model_creation import create_model
from worker.model_store import model_source

SHAPE = {"d_model": 32, "n_layer": 2, "d_state": 8}
# Families whose blocks hold one kind each need more of them for the default options to give every kind.
N_LAYER = {"nemotron_h": 4}
# Each layer's parts, as the stability report names them, of the tiny model POST /v1/models creates.
LAYERS = {
    "mamba": [["ssm"], ["ssm"]],
    "mamba2": [["ssm"], ["ssm"]],
    "falcon_mamba": [["ssm"], ["ssm"]],
    "nemotron_h": [["ssm"], ["attention"], ["mlp"], ["moe"]],
    "falcon_h1": [["ssm", "attention", "mlp"], ["ssm", "attention", "mlp"]],
    "jamba": [["ssm", "mlp"], ["attention", "moe"]],
    "bamba": [["ssm", "mlp"], ["attention", "mlp"]],
    "granitemoehybrid": [["ssm", "mlp", "moe"], ["attention", "mlp", "moe"]],
    "zamba2": [["ssm"], ["ssm", "attention", "mlp"]],
}


def _assert_every_tensor_moved(initial: dict[str, torch.Tensor], trained: dict[str, torch.Tensor]) -> None:
    # AdamW without weight decay moves a tensor only where it got a nonzero gradient.
    assert initial and len(trained) == len(initial)
    unchanged = [name for name, value in initial.items() if torch.equal(trained[name], value)]
    assert unchanged == []


def _as_trained_in_fp32(trained: nn.Module, reloaded: nn.Module) -> None:
    """Give `reloaded` the weights `trained` ended with, both in fp32: a bf16 job stores its frozen weights in
    bf16 (precision.py), so the fp32 base the adapter reloads onto is rounded the same way first. The two are
    then the same fp32 weights through the same forward, and only a wrong load moves their logits."""
    dtypes = {name: param.dtype for name, param in trained.named_parameters()}
    for name, param in reloaded.named_parameters():
        param.data = param.data.to(dtypes[name]).float()
    trained.float()


def _assert_stability_report(client: TestClient, job_id: str, model_type: str, precision: Precision) -> None:
    assert client.get(f"/v1/fine_tuning/jobs/{job_id}/stability.png").status_code == 200
    response = client.get(f"/v1/fine_tuning/jobs/{job_id}/stability")
    assert response.status_code == 200, response.text
    layers = LAYERS[model_type]
    for report in response.json().values():  # the base model and the fine-tuned one
        # An fp32 job is checked against bf16, the precision it would most likely move to.
        assert report["precision"] == ("bf16" if precision == "fp32" else precision)
        assert [d["kinds"] for d in report["divergence"]] == layers
        assert [layer["layer"] for layer in report["layers"]] == [i for i, kinds in enumerate(layers) if "ssm" in kinds]
        others = [{"layer": i, "kind": k} for i, kinds in enumerate(layers) for k in kinds if k != "ssm"]
        assert report["lyapunov_not_applicable"] == others
        assert report["stable"] and report["max_lyapunov_exponent"] < 0  # a random-init A is negative


@pytest.mark.parametrize("precision", get_args(Precision))
@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_a_created_model_trains_lora_in_each_precision_reloads_and_gets_a_stability_report(
    model_type: str,
    precision: Precision,
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

    # 24 examples make 4 steps: every LoRA tensor still moves when fp16's loss scaler skips one (nemotron_h and
    # zamba2 overflow once at its initial scale).
    # Merged weights are exported from the fp32 jobs: in half precision the merge rounds to the stored dtype.
    lora = {"export_merged": True} if precision == "fp32" else {}
    body = job_body(client, train_lines=24, validation_lines=8, precision=precision, lora=lora)
    job = client.post("/v1/fine_tuning/jobs", json=body)
    assert job.status_code == 200, job.text
    job_id = job.json()["id"]

    initial = record_attached_lora(monkeypatch)
    outcome, final = run_keeping_final_model(settings, job_id, monkeypatch)
    assert outcome["status"] == JobStatus.SUCCEEDED, outcome["error"]
    assert outcome["metrics"]["validation_loss"] < outcome["metrics"]["base_validation_loss"]

    download = client.get(f"/v1/fine_tuning/jobs/{job_id}/adapter")
    assert download.status_code == 200, download.text
    (tmp_path / "adapter.tar.gz").write_bytes(download.content)
    adapter = unpack(tmp_path / "adapter.tar.gz", tmp_path / "adapter")
    trained = load_file(str(adapter / "adapter_model.safetensors"))
    # A parameter target's adapters are stored under its module, one wrapper (".base_layer") per parameter.
    targets = {name.split(".lora_")[0].replace(".base_layer", "").rpartition(".")[2] for name in trained}
    parameter_modules = {t.rpartition(".")[0] for t in family.parameter_targets}
    assert targets == (set(family.default_targets) - family.parameter_targets) | parameter_modules
    _assert_every_tensor_moved(initial, trained)

    base = model_source(settings=settings, storage=storage_from_settings(settings), owner="alice", model_id="tiny")
    reloaded, _, _ = load_for_eval(str(base), adapter=adapter, device="cpu")
    assert final is not None
    if precision != "fp32":  # an fp32 job's final model is all fp32 already (and merged, when it exports)
        _as_trained_in_fp32(final, reloaded)
    assert_same_logits(final, reloaded)
    if lora:
        merged = client.get(f"/v1/fine_tuning/jobs/{job_id}/merged")
        assert merged.status_code == 200, merged.text
        (tmp_path / "merged.tar.gz").write_bytes(merged.content)
        folder = unpack(tmp_path / "merged.tar.gz", tmp_path / "merged")
        assert_same_logits(final, load_for_eval(str(folder), device="cpu")[0])

    _assert_stability_report(client, job_id, model_type, precision)
