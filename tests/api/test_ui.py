"""The dashboard's files at /ui: served without a key (they hold no data), under a strict
Content-Security-Policy, and nothing but the dashboard's own files."""

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.ui.routes import STATIC_FILES


def test_ui_redirects_to_the_index_which_loads_only_its_own_script_and_styles(app: FastAPI) -> None:
    client = TestClient(app)  # no key: authentication is on in these tests, the page needs none

    response = client.get("/ui")

    assert response.status_code == 200 and response.url.path == "/ui/"
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    assert "script-src 'self';" in policy and "default-src 'none'" in policy and "unsafe-inline" not in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    # No inline script or handler the policy would refuse, and every script and stylesheet is one we serve.
    assert not re.search(r"<script>|\son\w+=", response.text)
    linked = re.findall(r'(?:src|href)="([^"]+)"', response.text)
    assert linked and all(name in STATIC_FILES for name in linked)


@pytest.mark.parametrize("name", sorted(STATIC_FILES))
def test_each_dashboard_file_is_served_with_its_type_and_the_policy(app: FastAPI, name: str) -> None:
    response = TestClient(app).get(f"/ui/{name}")

    assert response.status_code == 200 and response.content
    assert response.headers["content-type"] == STATIC_FILES[name]
    assert "content-security-policy" in response.headers


def test_the_scripts_import_only_files_the_dashboard_serves(app: FastAPI) -> None:
    client = TestClient(app)
    scripts = [name for name in STATIC_FILES if name.endswith(".js")]

    imported = {
        name for script in scripts for name in re.findall(r'from "\./([^"]+)"', client.get(f"/ui/{script}").text)
    }

    assert imported and imported <= set(scripts)


@pytest.mark.parametrize("name", ["routes.py", "..%2Froutes.py", "nothing.js"])
def test_anything_else_under_ui_is_404(app: FastAPI, name: str) -> None:
    response = TestClient(app).get(f"/ui/{name}")

    assert response.status_code == 404
    assert response.json()["error"]["code"] in {"ui_file_not_found", "not_found"}
