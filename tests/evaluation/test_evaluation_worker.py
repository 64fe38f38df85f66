"""Evaluations and stability reports end to end: API request, worker run (in-process), API read-back."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings
from worker import job_stability
from worker.bootstrap import ensure_tiny_models
from worker.engine.spec import TrainHooks, TrainResult, TrainSpec
from worker.evaluation_runner import run_evaluation
from worker.job_runner import run_job


@pytest.fixture
def evaluate(client: TestClient, broker: Any, settings: Settings) -> Callable[..., dict[str, Any]]:
    """POST an evaluation, run the worker task it enqueued, return the evaluation as read back."""
    sent: list[str] = broker.evaluations

    def run(**body: Any) -> dict[str, Any]:
        response = client.post("/v1/evaluations", json=body)
        assert response.status_code == 200, response.text
        run_evaluation(settings=settings, evaluation_id=sent[-1])
        return client.get(f"/v1/evaluations/{response.json()['id']}").json()

    return run


@pytest.fixture
def train_file(client: TestClient, settings: Settings, tasks_dir: Path) -> str:
    """The id of the shipped lookup train file, uploaded; the tiny models exist in the catalog too."""
    assert settings.models_dir is not None
    ensure_tiny_models(settings.models_dir)
    upload = client.post(
        "/v1/files",
        files={"file": ("lookup_train.jsonl", (tasks_dir / "lookup_train.jsonl").read_bytes())},
        data={"purpose": "fine-tune"},
    )
    assert upload.status_code == 200, upload.text
    return upload.json()["id"]


def test_trained_job_gets_a_stability_report_and_beats_its_base(
    client: TestClient, settings: Settings, train_file: str, evaluate: Callable[..., dict[str, Any]]
) -> None:
    # LoRA, one epoch of 9 steps on the lookup train file, run by the worker in-process.
    hyper = {"n_epochs": 1, "batch_size": 16, "learning_rate": 1e-2, "max_seq_len": 64}
    body = {"model": "mamba-tiny", "training_file": train_file, "precision": "fp32", "hyperparameters": hyper}
    job_id = client.post("/v1/fine_tuning/jobs", json=body).json()["id"]
    run_job(settings=settings, job_id=job_id)
    assert client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "succeeded"

    report = client.get(f"/v1/fine_tuning/jobs/{job_id}/stability")
    assert report.status_code == 200, report.text
    assert set(report.json()) == {"base", "fine_tuned"}
    for side in report.json().values():
        assert side["stable"] and side["max_lyapunov_exponent"] < 0 and side["precision"] == "bf16"
        assert not side["exponential_growth"] and len(side["layers"]) == 4
    plot = client.get(f"/v1/fine_tuning/jobs/{job_id}/stability.png")
    assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG") and len(plot.content) > 20_000
    events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 50}).json()["data"]
    assert any(e["message"].startswith("Stability report: max Lyapunov exponent") for e in events)

    common = {"tasks": ["lookup"], "shots": [0, 1], "limit": 24}
    base = evaluate(model="mamba-tiny", **common)
    assert base["status"] == "succeeded", base["error"]
    tuned = evaluate(fine_tuning_job=job_id, reference_evaluation=base["id"], validation_file=train_file, **common)
    assert tuned["status"] == "succeeded", tuned["error"]
    before, after = base["results"]["tasks"][0], tuned["results"]["tasks"][0]
    assert set(after) >= {"acc_0", "acc_norm_0", "acc_1", "acc_norm_1", "icl_gain_1"} and after["n_examples"] == 24
    assert after["acc_0"] >= before["acc_0"] + 0.25, (before, after)
    ratio = tuned["results"]["icl_gain_ratio"]["lookup"]["icl_gain_ratio_1"]
    expected = after["icl_gain_1"] / before["icl_gain_1"] if before["icl_gain_1"] else None
    assert ratio == (pytest.approx(expected) if expected is not None else None)
    assert tuned["results"]["validation"]["tokens"] > 0 and tuned["finished_at"] >= tuned["created_at"]


def test_a_report_that_cannot_be_made_is_answered_with_its_reason_once_the_job_succeeded(
    client: TestClient, settings: Settings, train_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise ValueError("max() iterable argument is empty")

    def trained(spec: TrainSpec, _hooks: TrainHooks) -> TrainResult:  # the report, not training, is under test
        adapter = spec.output_dir / "adapter"
        adapter.mkdir(parents=True)
        (adapter / "adapter_config.json").write_text("{}")
        return TrainResult(adapter_dir=adapter, trained_tokens=10, steps=1, metrics={"train_loss": 1.0})

    monkeypatch.setattr(job_stability, "job_stability", broken)
    body = {"model": "mamba-tiny", "training_file": train_file, "precision": "fp32"}
    job_id = client.post("/v1/fine_tuning/jobs", json=body).json()["id"]
    run_job(settings=settings, job_id=job_id, train=trained)
    assert client.get(f"/v1/fine_tuning/jobs/{job_id}").json()["status"] == "succeeded"  # the adapter is fine

    for suffix in ("stability", "stability.png"):
        report = client.get(f"/v1/fine_tuning/jobs/{job_id}/{suffix}")
        assert report.status_code == 404, report.text
        error = report.json()["error"]
        assert error["code"] == "stability_failed" and error["message"].endswith("max() iterable argument is empty")
    events = client.get(f"/v1/fine_tuning/jobs/{job_id}/events", params={"limit": 50}).json()["data"]
    failed = [e for e in events if e["message"].startswith("Stability report failed")]
    assert len(failed) == 1 and failed[0]["level"] == "warning"
    # Recorded before the job turned succeeded, so a client that saw succeeded can read it.
    assert events.index(failed[0]) > [(e["data"] or {}).get("to") for e in events].index("succeeded")


def test_a_file_that_is_not_a_task_fails_the_evaluation(
    evaluate: Callable[..., dict[str, Any]], train_file: str
) -> None:
    failed = evaluate(model="mamba-tiny", tasks=[train_file])  # prompt/completion lines, not a task
    assert failed["status"] == "failed" and failed["results"] is None
    assert failed["error"]["code"] == "invalid_task_file"
    assert failed["error"]["message"].startswith(f"{train_file}.jsonl: line 1: expected")
