"""Fixtures of the Sparse Mamba API tests: model creation requests recorded instead of sent to Celery."""

import pytest
from fastapi import FastAPI

from app.base_models.routes import get_model_enqueuer


@pytest.fixture
def model_requests(app: FastAPI) -> list[str]:
    """Uids of the models POST /v1/models asked a worker to build."""
    sent: list[str] = []

    def enqueue(*, settings: object, model_uid: str) -> None:
        sent.append(model_uid)

    app.dependency_overrides[get_model_enqueuer] = lambda: enqueue
    return sent
