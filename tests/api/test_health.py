"""/healthz and /readyz."""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.db import now, session_scope
from app.deps import get_broker
from app.main import create_app
from app.settings import Settings
from app.workers.models import WorkerHeartbeat
from worker.liveness import beat


def test_healthz_is_ok_without_auth(app: FastAPI) -> None:
    response = TestClient(app).get("/healthz")

    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_readyz_is_ok_when_everything_answers_and_a_worker_beat(app: FastAPI, settings: Settings) -> None:
    beat(settings, started_at=now())

    response = TestClient(app).get("/readyz")

    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "broker": "ok", "storage": "ok", "workers": "ok"},
    }


def test_readyz_is_degraded_and_names_the_workers_when_none_beat_recently(app: FastAPI, settings: Settings) -> None:
    # Default heartbeat 10 s: a worker counts as alive for three beats plus 5 s of slack.
    no_worker = TestClient(app).get("/readyz")
    beat(settings, started_at=now() - 100)
    with session_scope(settings.database_url) as session:
        session.scalars(select(WorkerHeartbeat)).one().last_seen = now() - 36
    stale_worker = TestClient(app).get("/readyz")

    for response in (no_worker, stale_worker):
        assert response.status_code == 200  # the API itself still serves; jobs wait in the queue
        assert response.json() == {
            "status": "degraded",
            "checks": {"database": "ok", "broker": "ok", "storage": "ok", "workers": "none seen in the last 35 s"},
        }


def test_readyz_names_an_unreachable_broker(app: FastAPI, broker: Any) -> None:
    broker.reachable = False

    response = TestClient(app).get("/readyz")

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["checks"] == {
        "database": "ok",
        "broker": "unavailable (ConnectionError)",
        "storage": "ok",
        "workers": "none seen in the last 35 s",
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
