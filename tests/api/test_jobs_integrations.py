"""POST /v1/fine_tuning/jobs with `integrations` (W&B, MLflow): stored, returned, and every refusal."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from .factories import job_body

WANDB = {"type": "wandb", "wandb": {"project": "mamba-runs", "name": "first", "tags": ["lora", "tiny"]}}
MLFLOW = {"type": "mlflow", "mlflow": {"experiment_name": "mamba"}}


def create(client: TestClient, training_file: str, integrations: Any) -> Any:
    return client.post("/v1/fine_tuning/jobs", json=job_body(training_file, integrations=integrations))


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_integrations_are_stored_and_returned_as_given(client: TestClient, training_file: str) -> None:
    response = create(client, training_file, [WANDB, MLFLOW])

    assert response.status_code == 200, response.text
    job = response.json()
    assert job["integrations"] == [WANDB, MLFLOW]
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json()["integrations"] == [WANDB, MLFLOW]


def test_a_job_without_integrations_says_null(client: TestClient, training_file: str) -> None:
    assert client.post("/v1/fine_tuning/jobs", json=job_body(training_file)).json()["integrations"] is None


@pytest.mark.parametrize(
    ("integrations", "param"),
    [
        ([{"type": "comet", "comet": {}}], "integrations[0].type"),
        ([{"type": "wandb"}], "integrations[0]"),
        ([{"type": "wandb", "wandb": {"project": "p"}, "mlflow": {"experiment_name": "e"}}], "integrations[0]"),
        ([{"type": "wandb", "wandb": {"name": "no-project"}}], "integrations[0].wandb.project"),
        ([{"type": "wandb", "wandb": {"project": "p", "tags": "one"}}], "integrations[0].wandb.tags"),
        ([{"type": "wandb", "wandb": {"project": "p", "api_key": "x"}}], "integrations[0].wandb.api_key"),
        ([MLFLOW, {"type": "mlflow", "mlflow": {}}], "integrations[1].mlflow.experiment_name"),
        ([WANDB, WANDB], "integrations[1].type"),
        ([WANDB, MLFLOW, WANDB], "integrations"),
    ],
)
def test_invalid_integrations_are_refused_naming_the_field(
    client: TestClient, training_file: str, integrations: Any, param: str
) -> None:
    response = create(client, training_file, integrations)

    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_a_job_may_not_point_the_server_at_its_own_tracking_uri(client: TestClient, training_file: str) -> None:
    mlflow = {"type": "mlflow", "mlflow": {"experiment_name": "e", "tracking_uri": "file:///etc"}}

    response = create(client, training_file, [WANDB, mlflow])

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "integrations[1].mlflow.tracking_uri"
    assert "tracking_uri" in response.json()["error"]["message"]


@pytest.mark.parametrize("settings", [{"mlflow_allow_job_tracking_uri": True}], indirect=True)
def test_a_server_that_allows_it_stores_the_jobs_tracking_uri(client: TestClient, training_file: str) -> None:
    mlflow = {"type": "mlflow", "mlflow": {"experiment_name": "e", "tracking_uri": "http://mlflow.internal:5000"}}

    response = create(client, training_file, [mlflow])

    assert response.status_code == 200, response.text
    assert response.json()["integrations"] == [mlflow]
