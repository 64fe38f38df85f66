"""Every failure reaches the client in the OpenAI error shape, never as a bare framework error."""

import httpx
import pytest
from fastapi.testclient import TestClient


def assert_openai_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"code", "message", "param", "type"}
    assert error["code"] == code


def test_an_unknown_route_is_404(client: TestClient) -> None:
    assert_openai_error(client.get("/v1/nothing-here"), 404, "not_found")


def test_a_wrong_method_is_405(client: TestClient) -> None:
    assert_openai_error(client.put("/v1/files"), 405, "method_not_allowed")


@pytest.mark.parametrize(
    "path",
    ["/v1/files/file-a%00b", "/v1/fine_tuning/jobs/ftjob-%00", "/v1/files?after=%00", "/v1/models/a%00"],
)
def test_nul_in_a_url_is_400(client: TestClient, path: str) -> None:
    assert_openai_error(client.get(path), 400, "invalid_request")


def test_a_body_that_is_not_multipart_is_400(client: TestClient) -> None:
    response = client.post("/v1/files", content=b"--x\r\ngarbage", headers={"Content-Type": "multipart/form-data"})

    assert_openai_error(response, 400, "invalid_request")
