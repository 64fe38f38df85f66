"""Fixtures of the reliability tests: the API tests' model catalog and training file, a second tenant,
and an S3 server of the test's own that it can stop and start.

The builders come from tests/api/factories.py (importable as `api.factories`: pytest puts tests/ on
sys.path for both packages), so there is one copy of each.
"""

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from api.conftest import models, training_file  # noqa: F401  (fixtures, re-exported by name)
from e2e.conftest import aws_credentials  # noqa: F401  (fixture, re-exported by name)

from .own_s3 import OwnS3


@pytest.fixture
def bob(make_client: Callable[..., TestClient]) -> TestClient:
    """A client of a second tenant."""
    return make_client("bob")


@pytest.fixture
def s3(aws_credentials: None) -> Iterator[OwnS3]:
    server = OwnS3()
    try:
        server.start()
        yield server
    finally:
        server.stop()
