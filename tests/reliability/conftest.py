"""Fixtures of the reliability tests: the API tests' model catalog and training file, and a second tenant.

The builders come from tests/api/factories.py (importable as `api.factories`: pytest puts tests/ on
sys.path for both packages), so there is one copy of each.
"""

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from api.conftest import models, training_file  # noqa: F401  (fixtures, re-exported by name)


@pytest.fixture
def bob(make_client: Callable[..., TestClient]) -> TestClient:
    """A client of a second tenant."""
    return make_client("bob")
