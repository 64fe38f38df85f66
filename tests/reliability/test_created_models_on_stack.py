"""Created models on the production stack (production_stack.py: Postgres, Redis, an S3 server,
`mambaft api` and a `mambaft worker`). The worker's models_dir is empty and not the API's, and the API
writes no model folder: the worker builds the model into object storage, and the job and the
evaluation on it run from the weights it fetches back from there."""

import io
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.base_models.models import CreatedModel

from .production_stack import ProductionStack, production_stack
from .servers import WorkerProcess

# Worker start (Celery, torch) and a tiny model's build on a busy 2-core machine.
READY_TIMEOUT_S = 120
SCRATCH = {"id": "scratch-mamba", "family": "mamba", "d_model": 32, "n_layer": 2, "d_state": 8}


@pytest.fixture
def stack(tmp_path: Path, models_dir: Path, s3_endpoint: str) -> Iterator[ProductionStack]:
    with production_stack(tmp_path, models_dir, s3_endpoint) as running:
        yield running


def wait_for(client: httpx.Client, path: str, done: tuple[str, ...], stack: ProductionStack) -> dict[str, Any]:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if (body := client.get(path).raise_for_status().json())["status"] in done:
            return body
        time.sleep(0.5)
    pytest.fail(f"{path} still {body['status']} after {READY_TIMEOUT_S}s\n{stack.log_tail()}")


def test_a_created_model_is_stored_in_object_storage_and_a_worker_without_its_folder_trains_and_evaluates_it(
    stack: ProductionStack, models_dir: Path, tmp_path: Path
) -> None:
    api_models = sorted(p.name for p in models_dir.iterdir())
    worker_models, worker_data = tmp_path / "worker-models", tmp_path / "worker-var"
    worker_models.mkdir()
    env = {**stack.env, "MAMBAFT_MODELS_DIR": str(worker_models), "MAMBAFT_DATA_DIR": str(worker_data)}
    stack.workers.append(WorkerProcess(tmp_path, env))
    assert stack.api is not None
    stack.api.wait_up()
    with httpx.Client(base_url=f"{stack.api.url}/v1", timeout=30) as client:
        assert client.post("/models", json=SCRATCH).raise_for_status().json()["status"] == "creating"
        model = wait_for(client, "/models/scratch-mamba", ("ready", "failed"), stack)
        assert model["status"] == "ready", model["error"]

        job_body = {**stack.job_request(train_lines=16), "model": "scratch-mamba"}
        job_id = client.post("/fine_tuning/jobs", json=job_body).raise_for_status().json()["id"]
        job = stack.wait_terminal(job_id)
        assert job.status == "succeeded", (job.error, stack.log_tail())
        adapter = client.get(f"/fine_tuning/jobs/{job_id}/adapter").raise_for_status().content

        evaluation_body = {"model": "scratch-mamba", "tasks": ["lookup"], "shots": [0], "limit": 4}
        evaluation_id = client.post("/evaluations", json=evaluation_body).raise_for_status().json()["id"]
        evaluation = wait_for(client, f"/evaluations/{evaluation_id}", ("succeeded", "failed"), stack)
        assert evaluation["status"] == "succeeded", (evaluation["error"], stack.log_tail())
        (scores,) = evaluation["results"]["tasks"]
        assert (scores["task"], scores["n_examples"]) == ("lookup", 4) and 0 <= scores["acc_0"] <= 1

    row = stack._read(lambda s: s.query(CreatedModel).one())
    assert row.storage_key == f"models/{row.uid}/model.tar.gz"
    # Nothing went into either models_dir; the worker fetched the model once into its cache.
    assert sorted(p.name for p in models_dir.iterdir()) == api_models
    assert list(worker_models.iterdir()) == []
    assert (worker_data / "model-cache" / row.uid / "config.json").is_file()
    # The adapter ships the created model's tokenizer, read from that cache.
    with tarfile.open(fileobj=io.BytesIO(adapter)) as archive:
        assert "tokenizer.json" in archive.getnames()
