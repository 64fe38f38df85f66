"""Keys are revocable: after `mambaft revoke-key` the very next request with that key gets 401, and an
event stream it opened ends within seconds."""

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.factories import TEXT, job_body, jsonl, write_model
from app.auth.service import create_api_key, revoke_api_key
from app.db import session_scope
from app.jobs import events
from app.settings import Settings
from e2e.factories import MAMBAFT, clean_env

from .servers import api_with_key


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


# Longer than a stream may outlive its key's revocation, so a stream that never rechecks fails here.
STREAM_READ_TIMEOUT_S = 10


def _revoke(settings: Settings, key_id: str) -> float:
    with session_scope(settings.database_url) as session:
        revoke_api_key(session=session, key_id=key_id)
    return time.monotonic()


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_an_open_event_stream_ends_within_seconds_of_its_keys_revocation(tmp_path: Path, settings: Settings) -> None:
    assert settings.models_dir is not None
    write_model(settings.models_dir, "mamba-tiny", "mamba")
    server, row, key = api_with_key(tmp_path, settings)
    timeout = httpx.Timeout(10, read=STREAM_READ_TIMEOUT_S)
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout) as http:
            training_file = http.post(
                "/v1/files", files={"file": ("t.jsonl", jsonl(TEXT))}, data={"purpose": "fine-tune"}
            ).json()["id"]
            job = http.post("/v1/fine_tuning/jobs", json=job_body(training_file)).json()["id"]  # stays queued
            with http.stream("GET", f"/v1/fine_tuning/jobs/{job}/events", params={"stream": "true"}) as stream:
                assert stream.status_code == 200
                lines = stream.iter_lines()
                assert next(lines).startswith("id: ")  # the stream is open and has sent the job's first event
                revoked_at = _revoke(settings, row.id)
                rest = list(lines)
                ended_after = time.monotonic() - revoked_at
    finally:
        server.stop()

    frames = [frame for frame in "\n".join(rest).split("\n\n") if frame.strip()]
    assert frames[-1].startswith("event: error\ndata: ")
    error = json.loads(frames[-1].split("data: ", 1)[1])["error"]
    assert error["code"] == "invalid_api_key"
    # A key check is due at most KEY_CHECK_SECONDS after the last and runs with the next poll; the rest
    # is slack for a busy machine.
    assert ended_after <= events.KEY_CHECK_SECONDS + events.POLL_SECONDS + 2
