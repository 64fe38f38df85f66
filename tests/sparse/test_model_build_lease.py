"""A model build is leased like a job (worker/lease.py, worker/reaper.py): a worker killed mid-build leaves
a lease the reaper expires, and the build is queued again and completes, or fails with a clear error once
every attempt lost its worker, instead of staying `creating` forever."""

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.base_models.models import CreatedModel
from app.db import now, session_scope
from app.settings import Settings
from worker import model_creation
from worker.model_creation import create_model
from worker.reaper import reap

BODY = {"id": "tiny-build", "family": "mamba", "d_model": 32, "n_layer": 2, "d_state": 8}


class WorkerDied(BaseException):
    """The worker process dying mid-build: escapes every `except Exception`, as a crash would."""


def die(*_args: Any) -> int:
    raise WorkerDied


def expire_lease(settings: Settings, uid: str, **values: Any) -> None:
    with session_scope(settings.database_url) as session:
        statement = update(CreatedModel).where(CreatedModel.uid == uid).values(lease_expires_at=now() - 1, **values)
        session.execute(statement)


def killed_mid_build(client: TestClient, settings: Settings, broker: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """POST the model and let its first build die; returns its uid."""
    assert client.post("/v1/models", json=BODY).status_code == 200
    uid = broker.models[-1]
    with monkeypatch.context() as patch:
        patch.setattr(model_creation, "create_model_folder", die)
        with pytest.raises(WorkerDied):
            create_model(settings=settings, model_uid=uid)
    assert client.get(f"/v1/models/{BODY['id']}").json()["status"] == "creating"
    return uid


def test_a_build_whose_worker_died_is_requeued_by_the_reaper_and_completes(
    client: TestClient, settings: Settings, broker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    uid = killed_mid_build(client, settings, broker, monkeypatch)
    assert reap(settings=settings, broker=broker) == []  # its lease has not run out yet

    expire_lease(settings, uid)
    assert reap(settings=settings, broker=broker) == [uid]
    assert broker.models == [uid, uid]  # sent again

    create_model(settings=settings, model_uid=uid)
    model = client.get(f"/v1/models/{BODY['id']}").json()
    assert (model["status"], model["error"]) == ("ready", None)
    with session_scope(settings.database_url) as session:
        row = session.get(CreatedModel, uid)
        assert row is not None and row.attempts == 2 and row.lease_owner is None


def test_a_build_that_lost_its_worker_on_every_attempt_fails_with_a_clear_error(
    client: TestClient, settings: Settings, broker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    uid = killed_mid_build(client, settings, broker, monkeypatch)
    expire_lease(settings, uid, attempts=settings.max_attempts)
    assert reap(settings=settings, broker=broker) == [uid]

    model = client.get(f"/v1/models/{BODY['id']}").json()
    assert model["status"] == "failed" and model["error"]["code"] == "max_attempts_exceeded"
    assert broker.models == [uid]  # not sent again
    create_model(settings=settings, model_uid=uid)  # a late delivery changes nothing
    assert client.get(f"/v1/models/{BODY['id']}").json()["status"] == "failed"
