"""GET /metrics: open to a keyless scraper by default, behind any tenant's key when the server asks for
one, and answering (database_up 0) while the database is down."""

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from app.settings import Settings


def values(response_text: str) -> dict[str, float]:
    return {s.name: s.value for f in text_string_to_metric_families(response_text) for s in f.samples if not s.labels}


def test_a_scraper_needs_no_key_by_default(app: FastAPI, client: TestClient) -> None:
    response = TestClient(app).get("/metrics")  # no Authorization header, on a server with keys

    assert response.status_code == 200
    assert values(response.text)["mambaft_database_up"] == 1


@pytest.mark.parametrize("settings", [{"metrics_require_key": True}], indirect=True)
def test_the_server_can_require_a_key_for_metrics(app: FastAPI, client: TestClient) -> None:
    assert TestClient(app).get("/metrics").status_code == 401
    wrong = TestClient(app, headers={"Authorization": "Bearer mft-not-a-key"}).get("/metrics")
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"

    response = client.get("/metrics")  # any tenant's key

    assert response.status_code == 200
    assert "mambaft_jobs" in response.text


def test_a_scrape_answers_while_the_database_is_down(make_settings) -> None:
    settings: Settings = make_settings(
        database_url="postgresql+psycopg://postgres@127.0.0.1:1/gone", auth_disabled=True
    )

    response = TestClient(create_app(settings)).get("/metrics")

    assert response.status_code == 200
    assert values(response.text)["mambaft_database_up"] == 0
    assert "mambaft_jobs" not in response.text
