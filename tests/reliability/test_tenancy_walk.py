"""Tenancy, walked over every route the app serves: another tenant's objects are 404 on each, no list
shows them, and no create can reference them. The routes come from `app.routes`, so a new route fails
here until it is classified below (and, if it takes an object id, proved tenant-scoped)."""

import re
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from api.factories import job_body, update_job
from app.jobs.lifecycle import JobStatus
from app.settings import Settings

# Routes that show no tenant's own data by themselves: probes, docs, the dashboard's static files. The models
# routes serve the operator's shared catalog too, so they are walked separately (test_models_a_tenant_creates_...).
PUBLIC = {
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/ui"),
    ("GET", "/ui/"),
    ("GET", "/ui/{name}"),
    ("GET", "/metrics"),  # totals across tenants, no ids
    ("GET", "/v1/models"),
    ("GET", "/v1/models/{model_id:path}"),
}
# List routes, and the kind of object whose ids they return.
LISTS = {
    ("GET", "/v1/files"): "file_id",
    ("GET", "/v1/fine_tuning/jobs"): "fine_tuning_job_id",
    ("GET", "/v1/evaluations"): "evaluation_id",
    ("GET", "/v1/webhooks"): "webhook_id",
}
# The code a foreign id in each path parameter must get: exactly the code of an id that does not exist.
NOT_FOUND = {
    "file_id": "file_not_found",
    "fine_tuning_job_id": "job_not_found",
    "evaluation_id": "evaluation_not_found",
    "webhook_id": "webhook_not_found",
}


CHAT = [{"role": "user", "content": "x"}]
PARAM = re.compile(r"{(\w+)(?::\w+)?}")


@dataclass(frozen=True)
class Tenant:
    client: TestClient
    ids: dict[str, str]  # path parameter name -> id of this tenant's object


def routes(app: FastAPI) -> list[tuple[str, str, list[str]]]:
    """(method, full path template, path parameter names) of every route the app serves, included
    routers flattened."""
    return sorted(
        (method, context.path, PARAM.findall(context.path))
        for context in iter_route_contexts(app.routes)
        for method in context.original_route.methods - {"HEAD"}
    )


def fill(path: str, ids: dict[str, str]) -> str:
    for name, value in ids.items():
        path = path.replace(f"{{{name}}}", value)
    return path


@pytest.fixture
def alice(app: FastAPI, settings: Settings, client: TestClient, training_file: str) -> Tenant:
    """Alice with one of each object: a webhook, a file, a succeeded job (and its fine-tuned model), an
    evaluation of that job."""
    # A public address given as a literal: allowed by default, and nothing resolves or posts to it here.
    webhook = client.post("/v1/webhooks", json={"url": "https://8.8.8.8/hook"})
    assert webhook.status_code == 201, webhook.text
    job = client.post("/v1/fine_tuning/jobs", json=job_body(training_file)).json()["id"]
    fine_tuned = f"mamba-tiny:ft-:{job}"
    update_job(
        settings,
        job,
        status=JobStatus.SUCCEEDED,
        adapter_key=f"adapters/{job}/adapter.tar.gz",
        fine_tuned_model=fine_tuned,
    )
    evaluation = client.post("/v1/evaluations", json={"fine_tuning_job": job, "validation_file": training_file})
    assert evaluation.status_code == 200, evaluation.text
    ids = {
        "file_id": training_file,
        "fine_tuning_job_id": job,
        "evaluation_id": evaluation.json()["id"],
        "webhook_id": webhook.json()["id"],
        "fine_tuned_model": fine_tuned,
    }
    return Tenant(client, ids)


def foreign_creates(alice: Tenant, bobs_file: str) -> dict[tuple[str, str], list[tuple[dict, str]]]:
    """For each create route: bodies naming one of Alice's objects (and otherwise valid for Bob), and
    the 404 code Bob must get."""
    file, job, evaluation = alice.ids["file_id"], alice.ids["fine_tuning_job_id"], alice.ids["evaluation_id"]
    base = {"model": "mamba-tiny", "validation_file": bobs_file}
    fine_tuned = alice.ids["fine_tuned_model"]
    return {
        ("POST", "/v1/files"): [],  # names no other object; what it creates is checked against the lists
        ("POST", "/v1/models"): [],  # names no other object; checked in test_models_a_tenant_creates_...
        ("POST", "/v1/webhooks"): [],  # names no other object; what it creates is checked against the lists
        ("POST", "/v1/fine_tuning/jobs"): [
            (job_body(file), "file_not_found"),
            (job_body(bobs_file, validation_file=file), "file_not_found"),
        ],
        ("POST", "/v1/evaluations"): [
            ({"fine_tuning_job": job, "validation_file": bobs_file}, "job_not_found"),
            ({**base, "validation_file": file}, "file_not_found"),
            ({**base, "tasks": [file]}, "task_not_found"),
            ({**base, "reference_evaluation": evaluation}, "evaluation_not_found"),
        ],
        ("POST", "/v1/completions"): [({"model": fine_tuned, "prompt": "x"}, "model_not_found")],
        ("POST", "/v1/chat/completions"): [({"model": fine_tuned, "messages": CHAT}, "model_not_found")],
    }


def test_every_route_is_classified(app: FastAPI, alice: Tenant) -> None:
    known = PUBLIC | set(LISTS) | set(foreign_creates(alice, bobs_file=""))
    unclassified = [
        (method, path)
        for method, path, params in routes(app)
        if (method, path) not in known and not (params and set(params) <= set(NOT_FOUND))
    ]
    assert unclassified == [], "classify each new route in this test and prove it tenant-scoped"


def test_another_tenants_objects_are_404_on_every_route(app: FastAPI, alice: Tenant, bob: TestClient) -> None:
    walked = []
    # DELETE last, so Alice's objects exist for every other request.
    for method, path, params in sorted(routes(app), key=lambda r: r[0] == "DELETE"):
        if not params or (method, path) in PUBLIC:
            continue
        url = fill(path, alice.ids)
        variants = [url, f"{url}?stream=true"] if path.endswith("/events") else [url]
        for target in variants:
            response = bob.request(method, target)
            expected = NOT_FOUND[params[0]]
            assert (response.status_code, response.json()["error"]["code"]) == (404, expected), (method, target)
            if method == "GET" and not target.endswith("stream=true"):
                # The same request as the owner does reach the object: the 404 above is tenancy.
                mine = alice.client.request(method, target)
                assert mine.status_code != 404 or mine.json()["error"]["code"] != expected, (method, target)
        walked.append((method, path))
    assert len(walked) >= 11, walked  # the id-taking routes of today; more is fine
    # Bob's attempts changed nothing of Alice's.
    assert alice.client.get(fill("/v1/files/{file_id}", alice.ids)).status_code == 200


def test_lists_never_show_another_tenants_objects(app: FastAPI, alice: Tenant, bob: TestClient) -> None:
    bobs = bob.post("/v1/files", files={"file": ("b.jsonl", b'{"text": "b"}\n')}, data={"purpose": "fine-tune"})
    assert bobs.status_code == 200
    for (method, path), kind in LISTS.items():
        bobs_ids = {item["id"] for item in bob.request(method, path).json()["data"]}
        alices_ids = {item["id"] for item in alice.client.request(method, path).json()["data"]}
        assert alice.ids[kind] in alices_ids and alice.ids[kind] not in bobs_ids, path
        assert bobs.json()["id"] not in alices_ids, path
        # Nor does a cursor reveal that a foreign id exists.
        assert bob.request(method, path, params={"after": alice.ids[kind]}).status_code == 400, path


def test_no_create_can_reference_another_tenants_objects(alice: Tenant, bob: TestClient) -> None:
    bobs_file = bob.post(
        "/v1/files", files={"file": ("b.jsonl", b'{"text": "b"}\n')}, data={"purpose": "fine-tune"}
    ).json()["id"]
    for (method, path), probes in foreign_creates(alice, bobs_file).items():
        for body, code in probes:
            response = bob.request(method, path, json=body)
            assert (response.status_code, response.json()["error"]["code"]) == (404, code), (path, body)


def test_models_a_tenant_creates_are_invisible_to_other_tenants(app: FastAPI, alice: Tenant, bob: TestClient):
    client = alice.client
    body = {"id": "alices-mamba", "family": "mamba", "d_model": 64, "n_layer": 2, "d_state": 8}
    created = client.post("/v1/models", json=body)
    assert created.status_code == 200, created.text
    assert client.get("/v1/models/alices-mamba").status_code == 200
    assert "alices-mamba" in {m["id"] for m in client.get("/v1/models").json()["data"]}

    assert bob.get("/v1/models/alices-mamba").json()["error"]["code"] == "model_not_found"
    assert "alices-mamba" not in {m["id"] for m in bob.get("/v1/models").json()["data"]}
    # The shared catalog stays visible to both.
    assert bob.get("/v1/models/mamba-tiny").status_code == 200


def test_a_model_id_another_tenant_created_is_free_and_answers_as_if_it_did_not_exist(
    app: FastAPI, alice: Tenant, bob: TestClient
) -> None:
    body = {"id": "alice-secret-model", "family": "mamba", "d_model": 64, "n_layer": 2, "d_state": 8}
    assert alice.client.post("/v1/models", json=body).status_code == 200
    bobs_file = bob.post(
        "/v1/files", files={"file": ("b.jsonl", b'{"text": "b"}\n')}, data={"purpose": "fine-tune"}
    ).json()["id"]

    def answers(model_id: str) -> list[tuple[int, str, str]]:
        """What Bob gets for each place a model id goes: status, code, param (messages name the id)."""
        responses = [
            bob.get(f"/v1/models/{model_id}"),
            bob.post("/v1/fine_tuning/jobs", json=job_body(bobs_file, model=model_id)),
            bob.post("/v1/evaluations", json={"model": model_id, "tasks": ["lookup"]}),
            bob.post("/v1/models", json={**body, "id": "bobs-model", "tokenizer": model_id}),
            bob.post("/v1/completions", json={"model": model_id, "prompt": "x"}),
            bob.post("/v1/chat/completions", json={"model": model_id, "messages": CHAT}),
        ]
        return [(r.status_code, r.json()["error"]["code"], r.json()["error"]["param"]) for r in responses]

    assert answers("alice-secret-model") == answers("nobody-has-this")
    assert answers("nobody-has-this")[:3] == [(404, "model_not_found", "model")] * 3

    # Bob may create the same id: it is his own model, and neither tenant sees the other's.
    bobs = bob.post("/v1/models", json={**body, "d_model": 32})
    assert bobs.status_code == 200, bobs.text
    alices = alice.client.get("/v1/models/alice-secret-model").json()
    assert bob.get("/v1/models/alice-secret-model").json()["parameters"] == bobs.json()["parameters"]
    assert alices["parameters"] > bobs.json()["parameters"]  # d_model 64: still Alice's own
    assert [m["id"] for m in bob.get("/v1/models").json()["data"]].count("alice-secret-model") == 1
    # A repeat within one tenant is still a duplicate.
    again = bob.post("/v1/models", json=body)
    assert (again.status_code, again.json()["error"]["code"]) == (400, "duplicate_model_id")
