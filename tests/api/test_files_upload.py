"""POST /v1/files: validation while streaming, and nothing stored for a rejected file."""

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings

from .factories import CHAT, PROMPT, TEXT, jsonl, upload, upload_raw_filename


def stored_objects(settings: Settings) -> list[Path]:
    return [p for p in (settings.data_dir / "objects").rglob("*") if p.is_file()]


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_upload_returns_the_file_object(client: TestClient) -> None:
    content = jsonl(TEXT, TEXT)
    response = upload(client, content, filename="train.jsonl")

    assert response.status_code == 200
    body = response.json()
    assert body["id"].startswith("file-")
    assert body["object"] == "file"
    assert body["bytes"] == len(content)
    assert body["filename"] == "train.jsonl"
    assert body["purpose"] == "fine-tune"
    assert isinstance(body["created_at"], int)
    assert client.get(f"/v1/files/{body['id']}/content").content == content


@pytest.mark.parametrize("record", [TEXT, PROMPT, CHAT], ids=["text", "prompt_completion", "messages"])
def test_each_format_is_accepted_with_blank_lines_and_crlf(client: TestClient, record: dict) -> None:
    content = jsonl(record) + b"\n   \r\n" + jsonl(record).replace(b"\n", b"\r\n")

    assert upload(client, content).status_code == 200


def test_a_final_line_without_newline_and_a_bom_are_accepted(client: TestClient) -> None:
    assert upload(client, b"\xef\xbb\xbf" + jsonl(TEXT) + b'{"text": "last"}').status_code == 200


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        (jsonl(TEXT, '{"text": "broken"'), 2, "invalid JSON"),
        (jsonl(TEXT) + b'{"text": "\xff\xfe"}\n', 2, "invalid UTF-8 at byte 11"),
        (jsonl(TEXT, {"txt": "x"}), 2, 'got keys "txt"'),
        (jsonl({"prompt": "p"}), 1, 'missing the key(s) "completion"'),
        (jsonl({"text": "a", "id": 1}), 1, 'unexpected key(s) "id"'),
        (jsonl({"text": 3}), 1, '"text" must be a string, got a number'),
        (jsonl({"prompt": "p", "completion": None}), 1, '"completion" must be a string, got null'),
        (jsonl(TEXT, TEXT, PROMPT), 3, "the prompt_completion format differs from the text format of line 1"),
        (jsonl(CHAT, "", TEXT), 3, "format differs"),
        (jsonl([1, 2]), 1, "expected a JSON object, got an array"),
        (jsonl({"messages": []}), 1, '"messages" must be a non-empty array'),
        (jsonl({"messages": ["hi"]}), 1, "messages[0] must be an object"),
        (jsonl({"messages": [{"role": "bot", "content": "x"}]}), 1, "messages[0].role must be one of"),
        (jsonl({"messages": [{"role": "user"}]}), 1, 'messages[0] is missing the key(s) "content"'),
        (jsonl({"messages": [{"role": "user", "content": "x"}]}), 1, "no assistant message"),
        (jsonl(TEXT, {"text": ""}), 2, '"text" is empty: there is nothing to train on'),
        (jsonl({"prompt": "p", "completion": ""}, PROMPT), 1, '"completion" is empty: there is nothing to train on'),
        (
            jsonl(CHAT, {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]}),
            2,
            "every assistant message is empty: there is nothing to train on",
        ),
        (jsonl(TEXT) + b'{"text": "\\ud800"}\n', 2, "unpaired UTF-16 surrogate"),
        (b"", 1, "no training examples"),
        (b"\n  \n", 1, "no training examples"),
    ],
)
def test_a_bad_file_is_rejected_naming_the_first_bad_line(
    client: TestClient, settings: Settings, content: bytes, line: int, reason: str
) -> None:
    response = upload(client, content)

    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_training_file", "file")
    assert error["message"].startswith(f"Line {line}: ")
    assert reason in error["message"]
    assert client.get("/v1/files").json()["data"] == []
    assert stored_objects(settings) == []


def test_purpose_must_be_fine_tune(client: TestClient) -> None:
    response = upload(client, jsonl(TEXT), purpose="assistants")

    assert response.status_code == 400
    assert response.json()["error"]["param"] == "purpose"


def test_a_missing_file_part_names_the_field(client: TestClient) -> None:
    response = client.post("/v1/files", data={"purpose": "fine-tune"})

    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": "invalid_request",
        "message": "file: Field required",
        "param": "file",
        "type": "invalid_request_error",
    }


@pytest.mark.parametrize(
    ("files", "data", "param"),
    [
        ([("file", ("a.jsonl", jsonl(TEXT))), ("file", ("b.jsonl", jsonl(PROMPT)))], {"purpose": "fine-tune"}, "file"),
        ([("file", ("a.jsonl", jsonl(TEXT)))], {"purpose": ["fine-tune", "fine-tune"]}, "purpose"),
    ],
    ids=["file", "purpose"],
)
def test_a_repeated_form_field_is_refused_naming_it(
    client: TestClient, settings: Settings, files: list, data: dict, param: str
) -> None:
    response = client.post("/v1/files", files=files, data=data)

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("invalid_request", param)
    assert "more than once" in error["message"]
    assert client.get("/v1/files").json()["data"] == []
    assert stored_objects(settings) == []


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("../../etc/passwd.jsonl", "passwd.jsonl"),
        ("C:\\Users\\me\\train.jsonl", "train.jsonl"),
        ("données (v2) €.jsonl", "données (v2) €.jsonl"),
        ("/", "upload.jsonl"),
        ("x" * 300, "x" * 255),
    ],
)
def test_filenames_lose_directories_and_control_characters(client: TestClient, sent: str, kept: str) -> None:
    response = upload(client, jsonl(TEXT), filename=sent)

    assert response.status_code == 200
    assert response.json()["filename"] == kept


def test_control_characters_and_nul_are_dropped_from_filenames(client: TestClient) -> None:
    response = upload_raw_filename(client, b"a\tb\x00c\x1b.jsonl", jsonl(TEXT))

    assert response.status_code == 200
    assert response.json()["filename"] == "abc.jsonl"
