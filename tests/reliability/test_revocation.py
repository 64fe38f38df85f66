"""Keys are revocable: after `mambaft revoke-key` the very next request with that key gets 401."""

import subprocess

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.auth.service import create_api_key
from app.db import session_scope
from app.settings import Settings
from e2e.factories import MAMBAFT, clean_env


# Postgres too: there reads look the key up on the async driver (Db.read), writes on a worker thread.
@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_revoked_key_gets_401_at_once(app: FastAPI, settings: Settings, client: TestClient) -> None:
    with session_scope(settings.database_url) as session:
        row, key = create_api_key(session=session, owner="alice")
    doomed = TestClient(app, headers={"Authorization": f"Bearer {key}"})
    assert doomed.get("/v1/files").status_code == 200

    revoke = subprocess.run(
        [MAMBAFT, "revoke-key", row.id],
        env=clean_env(MAMBAFT_DATABASE_URL=settings.database_url, MAMBAFT_DATA_DIR=str(settings.data_dir)),
        capture_output=True,
        timeout=60,
    )
    assert revoke.returncode == 0, revoke.stderr

    # A read and a write: on Postgres they look the key up on different connections (Db.read, Db.run).
    for response in (doomed.get("/v1/files"), doomed.delete("/v1/files/file-x")):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
    # The owner's other keys keep working: revocation is per key, not per tenant.
    assert client.get("/v1/files").status_code == 200
