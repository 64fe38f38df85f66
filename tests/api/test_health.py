"""/healthz and /readyz."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.deps import get_broker
from app.main import create_app
from app.settings import Settings


def test_healthz_is_ok_without_auth(app: FastAPI) -> None:
    response = TestClient(app).get("/healthz")

    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readyz_is_ok_when_everything_answers(app: FastAPI) -> None:
    response = TestClient(app).get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok", "storage": "ok"}}


def test_readyz_names_an_unreachable_broker(app: FastAPI, broker: Any) -> None:
    broker.reachable = False

    response = TestClient(app).get("/readyz")

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["checks"] == {
        "database": "ok",
        "broker": "unavailable (ConnectionError)",
        "storage": "ok",
    }


def test_readyz_names_an_unreachable_database_and_storage(
    make_settings: Callable[..., Settings], tmp_path: Path, broker: Any
) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    settings = make_settings(
        database_url=f"sqlite:///{not_a_folder}/db.sqlite", storage_url=f"file://{not_a_folder}/objects"
    )
    app = create_app(settings)
    app.dependency_overrides[get_broker] = lambda: broker

    response = TestClient(app).get("/readyz")

    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["broker"] == "ok"
    assert checks["database"].startswith("unavailable")
    assert checks["storage"].startswith("unavailable")
