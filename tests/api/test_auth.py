"""Bearer API keys: stored hashed, owner-scoped, revocable; auth can be turned off for local use."""

import hashlib
from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.auth.models import ApiKey
from app.auth.service import create_api_key, revoke_api_key
from app.db import session_scope
from app.errors import ApiError
from app.main import create_app
from app.settings import Settings

PROTECTED = ["/v1/files", "/v1/fine_tuning/jobs", "/v1/models", "/v1/models/anything"]


def assert_invalid_key(response: httpx.Response) -> None:
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("path", PROTECTED)
@pytest.mark.parametrize("authorization", [None, "Bearer mft-wrong", "Basic abc", "Bearer", "mft-nobearer"])
def test_requests_without_a_valid_key_are_401(app: FastAPI, path: str, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}

    assert_invalid_key(TestClient(app).get(path, headers=headers))


def test_a_revoked_key_stops_working(app: FastAPI, settings: Settings) -> None:
    with session_scope(settings.database_url) as session:
        row, key = create_api_key(session=session, owner="alice")
    client = TestClient(app, headers={"Authorization": f"Bearer {key}"})
    assert client.get("/v1/files").status_code == 200

    with session_scope(settings.database_url) as session:
        revoke_api_key(session=session, key_id=row.id)

    assert_invalid_key(client.get("/v1/files"))


def test_keys_are_stored_only_as_sha256(settings: Settings) -> None:
    with session_scope(settings.database_url) as session:
        _, key = create_api_key(session=session, owner="alice", name="ci")
    with session_scope(settings.database_url) as session:
        row = session.scalars(select(ApiKey)).one()

    assert key.startswith("mft-")
    assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
    assert key not in (row.id, row.name, row.owner, row.prefix)
    assert key.startswith(row.prefix)


def test_with_auth_disabled_every_request_acts_as_local(
    make_settings: Callable[..., Settings], database_url: str
) -> None:
    client = TestClient(create_app(make_settings(database_url=database_url, auth_disabled=True)))

    response = client.post("/v1/files", files={"file": ("t.jsonl", b'{"text": "a"}\n')}, data={"purpose": "fine-tune"})

    assert response.status_code == 200
    assert [f["id"] for f in client.get("/v1/files").json()["data"]] == [response.json()["id"]]


@pytest.mark.parametrize(
    "owner",
    ["", "a" * 129, "ac me", "acme\n", "\tacme", "ac\x00me", "ac\x1bme", "ac\u202eme", "ac\u200bme", "ac\u00a0me"],
    ids=["empty", "129-chars", "space", "newline", "tab", "nul", "escape", "bidi-override", "zero-width", "nbsp"],
)
def test_a_key_for_an_empty_overlong_or_unprintable_owner_is_refused(settings: Settings, owner: str) -> None:
    with pytest.raises(ApiError) as refused, session_scope(settings.database_url) as session:
        create_api_key(session=session, owner=owner)

    assert (refused.value.status_code, refused.value.param) == (400, "owner")
    with session_scope(settings.database_url) as session:
        assert session.scalars(select(ApiKey)).all() == []


@pytest.mark.parametrize("owner", ["a" * 128, "acme-corp_2", "équipe.données", "团队"])
def test_a_key_for_a_printable_one_word_owner_is_created(settings: Settings, owner: str) -> None:
    with session_scope(settings.database_url) as session:
        row, _ = create_api_key(session=session, owner=owner)

    assert row.owner == owner
