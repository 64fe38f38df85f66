"""Fixtures of the reliability tests: the API tests' model catalog and training file, a second tenant,
and an S3 server of the test's own that it can stop and start; the stack fixtures of tests/e2e/conftest.py.

The builders come from tests/api/factories.py (importable as `api.factories`: pytest puts tests/ on
sys.path for both packages), so there is one copy of each.
"""

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

import api.conftest
import e2e.conftest

from .own_s3 import OwnS3

# Fixtures of other folders that these tests take by name, re-exported here once for every module.
models = api.conftest.models
training_file = api.conftest.training_file
aws_credentials = e2e.conftest.aws_credentials
models_dir = e2e.conftest.models_dir
s3_endpoint = e2e.conftest.s3_endpoint
postgres_url = e2e.conftest.postgres_url


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
