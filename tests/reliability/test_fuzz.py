"""Fuzz every operation of the OpenAPI schema against the ASGI app: valid and invalid inputs alike never
get a 5xx, and every 4xx is the OpenAI error shape. 1,000 requests in the default suite, 10,000 under
`make soak`."""

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

DEFAULT_REQUESTS = 1_000
SOAK_REQUESTS = 10_000
ERROR_KEYS = {"code", "message", "param", "type"}


def assert_well_behaved(response: httpx.Response, label: str) -> None:
    assert response.status_code < 500, f"{label} -> {response.status_code}: {response.text[:500]}"
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == ERROR_KEYS and isinstance(error["code"], str), (label, response.text[:500])


def fuzz(app: FastAPI, headers: dict[str, str], requests: int, *, derandomize: bool) -> int:
    """Send `requests` generated requests, each to an operation drawn at random; returns how many went out."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    strategies = st.one_of([op.as_strategy(generation_mode=mode) for op in operations for mode in GenerationMode])
    sent = 0

    # database=None: nothing written to .hypothesis/ in the repository.
    @settings(
        max_examples=requests,
        deadline=None,
        database=None,
        derandomize=derandomize,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategies)
    def one(case: schemathesis.Case) -> None:
        nonlocal sent
        sent += 1
        response = case.call(headers={**(case.headers or {}), **headers})
        assert_well_behaved(httpx.Response(response.status_code, content=response.content), case.operation.label)

    one()
    return sent


@pytest.fixture
def fuzz_target(app: FastAPI, client: TestClient, training_file: str) -> tuple[FastAPI, dict[str, str]]:
    """The app with one of Alice's files in it (so some ids resolve), and her auth header."""
    return app, {"Authorization": client.headers["Authorization"]}


def test_1000_generated_requests_get_no_5xx_and_only_openai_shaped_errors(
    fuzz_target: tuple[FastAPI, dict[str, str]],
) -> None:
    sent = fuzz(*fuzz_target, DEFAULT_REQUESTS, derandomize=True)

    assert sent >= DEFAULT_REQUESTS


@pytest.mark.soak
def test_10000_generated_requests_get_no_5xx_and_only_openai_shaped_errors(
    fuzz_target: tuple[FastAPI, dict[str, str]],
) -> None:
    sent = fuzz(*fuzz_target, SOAK_REQUESTS, derandomize=False)

    assert sent >= SOAK_REQUESTS
