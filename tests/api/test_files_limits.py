"""Upload size and line length limits."""

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings

from .factories import TEXT, job_body, jsonl, upload
from .test_files_upload import stored_objects

MAX_UPLOAD = 4096
MAX_LINE = 64


@pytest.fixture
def settings(make_settings: Callable[..., Settings], database_url: str) -> Settings:
    return make_settings(database_url=database_url, max_upload_bytes=MAX_UPLOAD, max_line_bytes=MAX_LINE)


def test_a_line_over_the_limit_is_rejected_with_its_number(client: TestClient) -> None:
    long_line = {"text": "x" * MAX_LINE}

    response = upload(client, jsonl(TEXT, TEXT, long_line, TEXT))

    assert response.status_code == 400
    assert response.json()["error"]["message"] == f"Line 3: the line is longer than the limit of {MAX_LINE} bytes"


def test_an_overlong_last_line_without_newline_is_rejected(client: TestClient) -> None:
    response = upload(client, jsonl(TEXT) + b"y" * (MAX_LINE + 1))

    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("Line 2: the line is longer")


def test_a_line_exactly_at_the_limit_is_accepted(client: TestClient) -> None:
    line = '{"text": "' + "x" * (MAX_LINE - 12) + '"}'
    assert len(line) == MAX_LINE

    assert upload(client, jsonl(line)).status_code == 200


@pytest.mark.parametrize("size", [MAX_UPLOAD + 1, 200_000], ids=["just-over", "far-over"])
def test_an_oversize_upload_gets_413_and_stores_nothing(client: TestClient, settings: Settings, size: int) -> None:
    line = jsonl(TEXT)
    content = line * (size // len(line) + 1)

    response = upload(client, content)

    assert response.status_code == 413
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("file_too_large", "file")
    assert stored_objects(settings) == []
    assert client.get("/v1/files").json()["data"] == []


def test_an_oversize_json_body_gets_413(client: TestClient) -> None:
    body = job_body("file-x", metadata={"k": "v" * 2_000_000})

    response = client.post("/v1/fine_tuning/jobs", json=body)

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_a_streamed_body_without_length_is_cut_off_at_the_cap(client: TestClient) -> None:
    # A generator body goes out chunked, with no Content-Length to refuse up front.
    chunks = (b"x" * 65536 for _ in range(40))

    response = client.post("/v1/fine_tuning/jobs", content=chunks, headers={"Content-Type": "application/json"})

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"


def test_a_streamed_upload_without_length_is_cut_off_at_the_cap(client: TestClient, settings: Settings) -> None:
    boundary = b"b0undary"
    head = b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n\r\n'
    chunks = iter([head, *(jsonl(TEXT) * 1000 for _ in range(10))])

    response = client.post(
        "/v1/files", content=chunks, headers={"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"}
    )

    assert response.status_code == 413
    assert response.json()["error"]["code"] == "file_too_large"
    assert stored_objects(settings) == []
