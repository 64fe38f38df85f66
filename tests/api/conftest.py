"""Fixtures of the API tests: a local model catalog and an uploaded training file."""

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings

from .factories import TEXT, jsonl, upload, write_model


@pytest.fixture
def models(settings: Settings) -> list[str]:
    """Two local models: `mamba-tiny` (Mamba, 2x3 + 4 parameters) and `org/mamba2-tiny` (Mamba-2)."""
    assert settings.models_dir is not None
    write_model(settings.models_dir, "mamba-tiny", "mamba", shapes=[[2, 3], [4]])
    write_model(settings.models_dir, "org/mamba2-tiny", "mamba2")
    return ["mamba-tiny", "org/mamba2-tiny"]


@pytest.fixture
def training_file(client: TestClient, models: list[str]) -> str:
    """The id of a valid text-format file uploaded by `client` (the models exist too)."""
    response = upload(client, jsonl(TEXT, TEXT))
    assert response.status_code == 200, response.text
    return response.json()["id"]
