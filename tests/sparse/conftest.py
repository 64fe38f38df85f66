"""Fixtures of the Sparse Mamba API tests: model creation requests recorded instead of sent to Celery."""

from typing import Any

import pytest


@pytest.fixture
def model_requests(broker: Any) -> list[str]:
    """Uids of the models POST /v1/models asked a worker to build (the conftest's FakeBroker records them)."""
    return broker.models
