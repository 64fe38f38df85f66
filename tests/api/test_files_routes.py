"""GET/DELETE /v1/files: listing with pagination, reading, downloading, deleting."""

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings

from .factories import TEXT, job_body, jsonl, update_job, upload
from .test_files_upload import stored_objects


def upload_many(client: TestClient, count: int) -> list[str]:
    return [upload(client, jsonl(TEXT), filename=f"f{i}.jsonl").json()["id"] for i in range(count)]


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_files_are_listed_newest_first_page_by_page(client: TestClient) -> None:
    # Created within one second, so the order rests on the id tie-break; the pages must still partition.
    ids = upload_many(client, 5)

    first = client.get("/v1/files", params={"limit": 2}).json()
    second = client.get("/v1/files", params={"limit": 2, "after": first["data"][-1]["id"]}).json()
    third = client.get("/v1/files", params={"limit": 2, "after": second["data"][-1]["id"]}).json()

    assert first["object"] == "list"
    assert [len(first["data"]), len(second["data"]), len(third["data"])] == [2, 2, 1]
    assert (first["has_more"], second["has_more"], third["has_more"]) == (True, True, False)
    listed = [f["id"] for page in (first, second, third) for f in page["data"]]
    assert sorted(listed) == sorted(ids)
    assert listed == [f["id"] for f in client.get("/v1/files").json()["data"]]


def test_list_filters_by_purpose(client: TestClient) -> None:
    upload_many(client, 1)

    assert len(client.get("/v1/files", params={"purpose": "fine-tune"}).json()["data"]) == 1
    assert client.get("/v1/files", params={"purpose": "batch"}).json()["data"] == []


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"after": "file-unknown"}, "after"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "x"}, "limit"),
    ],
)
def test_bad_list_parameters_are_400(client: TestClient, params: dict, param: str) -> None:
    response = client.get("/v1/files", params=params)

    assert response.status_code == 400
    assert response.json()["error"]["param"] == param


def test_get_returns_the_same_object_as_the_upload(client: TestClient) -> None:
    created = upload(client, jsonl(TEXT)).json()

    assert client.get(f"/v1/files/{created['id']}").json() == created


def test_content_streams_the_exact_bytes(client: TestClient) -> None:
    content = jsonl(*[{"text": f"line {i} " + "é" * 50} for i in range(3000)])
    file_id = upload(client, content).json()["id"]

    response = client.get(f"/v1/files/{file_id}/content")

    assert response.status_code == 200
    assert response.content == content


def test_delete_removes_the_file_and_its_bytes(client: TestClient, settings: Settings) -> None:
    file_id = upload(client, jsonl(TEXT)).json()["id"]

    response = client.delete(f"/v1/files/{file_id}")

    assert response.status_code == 200
    assert response.json() == {"id": file_id, "object": "file", "deleted": True}
    assert client.get(f"/v1/files/{file_id}").status_code == 404
    assert client.get(f"/v1/files/{file_id}/content").status_code == 404
    assert stored_objects(settings) == []


def test_a_file_an_unfinished_job_needs_cannot_be_deleted(
    client: TestClient, training_file: str, settings: Settings
) -> None:
    job_id = client.post("/v1/fine_tuning/jobs", json=job_body(training_file)).json()["id"]

    refused = client.delete(f"/v1/files/{training_file}")
    update_job(settings, job_id, status="succeeded")
    allowed = client.delete(f"/v1/files/{training_file}")

    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "file_in_use"
    assert job_id in refused.json()["error"]["message"]
    assert allowed.status_code == 200


@pytest.mark.parametrize("path", ["/v1/files/file-nope", "/v1/files/file-nope/content"])
def test_unknown_files_are_404(client: TestClient, path: str) -> None:
    for response in (client.get(path), client.delete("/v1/files/file-nope")):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "file_not_found"


def test_content_missing_from_storage_is_a_clean_404(client: TestClient, settings: Settings) -> None:
    file_id = upload(client, jsonl(TEXT)).json()["id"]
    for path in stored_objects(settings):
        path.unlink()

    response = client.get(f"/v1/files/{file_id}/content")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "file_content_missing"
