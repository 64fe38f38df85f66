"""POST /v1/fine_tuning/jobs: defaults, OpenAI compatibility, and every validation error."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.db import new_id, now, session_scope
from app.files.models import File
from app.settings import Settings

from .factories import job_body

# The conftest's FakeBroker (conftest modules are not imported by tests).
Broker = Any


def create(client: TestClient, body: Any) -> Any:
    return client.post("/v1/fine_tuning/jobs", json=body)


@pytest.mark.parametrize("database_url", ["sqlite", "postgres"], indirect=True)
def test_a_job_is_queued_with_defaults_and_enqueued(client: TestClient, training_file: str, broker: Broker) -> None:
    response = create(client, job_body(training_file))

    assert response.status_code == 200
    job = response.json()
    assert job["id"].startswith("ftjob-")
    assert job["object"] == "fine_tuning.job"
    assert (job["model"], job["status"], job["training_file"]) == ("mamba-tiny", "queued", training_file)
    assert job["precision"] == "bf16"
    assert job["lora"] == {
        "r": 8,
        "alpha": 16.0,
        "dropout": 0.0,
        "target_modules": ["in_proj", "x_proj", "dt_proj", "out_proj"],
        "train_ssm_params": False,
        "export_merged": False,
    }
    assert job["hyperparameters"] == {
        "n_epochs": 1,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "max_seq_len": 256,
        "activation_recompute": False,
    }
    assert isinstance(job["seed"], int)
    assert job["progress"] == {"step": 0, "total_steps": None}
    assert (job["finished_at"], job["error"], job["fine_tuned_model"], job["trained_tokens"]) == (None,) * 4
    assert broker.enqueued == [job["id"]]
    assert client.get(f"/v1/fine_tuning/jobs/{job['id']}").json() == job


def test_every_setting_is_stored_as_given(client: TestClient, training_file: str) -> None:
    body = job_body(
        training_file,
        model="org/mamba2-tiny",
        validation_file=training_file,
        precision="fp16",
        lora={
            "r": 16,
            "alpha": 32,
            "dropout": 0.1,
            "target_modules": ["in_proj"],
            "train_ssm_params": True,
            "export_merged": True,
        },
        hyperparameters={
            "n_epochs": 3,
            "batch_size": 8,
            "learning_rate": 0.5,
            "max_seq_len": 1024,
            "activation_recompute": True,
        },
        seed=1234,
        suffix="my-run",
        metadata={"team": "nlp", "ticket": ""},
    )

    job = create(client, body).json()

    assert job["model"] == "org/mamba2-tiny"
    assert job["validation_file"] == training_file
    assert job["precision"] == "fp16"
    assert job["lora"] == {**body["lora"], "alpha": 32.0}
    assert job["hyperparameters"] == body["hyperparameters"]
    assert (job["seed"], job["suffix"], job["metadata"]) == (1234, "my-run", {"team": "nlp", "ticket": ""})


def test_mamba2_gets_its_own_default_targets(client: TestClient, training_file: str) -> None:
    job = create(client, job_body(training_file, model="org/mamba2-tiny")).json()

    assert job["lora"]["target_modules"] == ["in_proj", "out_proj"]


def test_lora_null_means_full_fine_tuning(client: TestClient, training_file: str) -> None:
    job = create(client, job_body(training_file, lora=None)).json()

    assert job["lora"] is None


def test_openai_method_and_auto_values_are_understood(client: TestClient, training_file: str) -> None:
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": "auto"}}}

    job = create(client, job_body(training_file, method=method)).json()

    assert job["hyperparameters"] == {
        "n_epochs": 2,
        "batch_size": 4,
        "learning_rate": 1e-3,
        "max_seq_len": 256,
        "activation_recompute": False,
    }
    assert job["method"] == {"type": "supervised", "supervised": {"hyperparameters": job["hyperparameters"]}}


def test_dropout_is_allowed_when_no_target_is_kernel_read(client: TestClient, training_file: str) -> None:
    lora = {"dropout": 0.2, "target_modules": ["in_proj", "lm_head"]}

    assert create(client, job_body(training_file, lora=lora)).status_code == 200


def test_a_broker_outage_refuses_the_job_with_503_and_stores_nothing(
    client: TestClient, training_file: str, broker: Broker
) -> None:
    broker.reachable = False
    key = {"Idempotency-Key": "create-once"}

    refused = client.post("/v1/fine_tuning/jobs", json=job_body(training_file), headers=key)

    assert (refused.status_code, refused.json()["error"]["code"]) == (503, "broker_unavailable")
    assert int(refused.headers["retry-after"]) > 0
    assert client.get("/v1/fine_tuning/jobs").json()["data"] == []
    broker.reachable = True
    retried = client.post("/v1/fine_tuning/jobs", json=job_body(training_file), headers=key)
    assert retried.status_code == 200  # the 503 was not remembered under the key
    assert broker.enqueued == [retried.json()["id"]]


def test_a_send_failing_after_the_broker_check_still_answers_the_committed_job(
    client: TestClient, training_file: str, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broker_lost_meanwhile(**_: Any) -> None:
        raise ConnectionError("broker went away after the check")

    monkeypatch.setattr(broker, "enqueue_job", broker_lost_meanwhile)

    response = create(client, job_body(training_file))

    # The job is committed as queued and the reaper sends it, so the 200 is true.
    assert response.status_code == 200
    assert client.get(f"/v1/fine_tuning/jobs/{response.json()['id']}").json()["status"] == "queued"


LONG = "x" * 65
RECOMPUTE = "hyperparameters.activation_recompute"


@pytest.mark.parametrize(
    ("overrides", "status", "code", "param"),
    [
        ({"model": "no-such-model"}, 404, "model_not_found", "model"),
        ({"training_file": "file-nope"}, 404, "file_not_found", "training_file"),
        ({"validation_file": "file-nope"}, 404, "file_not_found", "validation_file"),
        ({"lora": {"target_modules": ["in_proj", "conv1d"]}}, 400, "invalid_target_module", "lora.target_modules"),
        ({"lora": {"dropout": 0.1}}, 400, "invalid_lora_dropout", "lora.dropout"),
        ({"lora": {"r": 0}}, 400, "invalid_request", "lora.r"),
        ({"lora": {"r": 257}}, 400, "invalid_request", "lora.r"),
        ({"lora": {"alpha": 0}}, 400, "invalid_request", "lora.alpha"),
        ({"lora": {"alpha": 1e308}}, 400, "invalid_request", "lora.alpha"),
        ({"lora": {"alpha": 4097}}, 400, "invalid_request", "lora.alpha"),
        ({"lora": {"dropout": 1}}, 400, "invalid_request", "lora.dropout"),
        ({"lora": {"target_modules": []}}, 400, "invalid_request", "lora.target_modules"),
        ({"lora": {"target_modules": [1]}}, 400, "invalid_request", "lora.target_modules[0]"),
        ({"lora": {"rank": 4}}, 400, "invalid_request", "lora.rank"),
        ({"hyperparameters": {"n_epochs": 0}}, 400, "invalid_request", "hyperparameters.n_epochs"),
        ({"hyperparameters": {"n_epochs": 101}}, 400, "invalid_request", "hyperparameters.n_epochs"),
        ({"hyperparameters": {"batch_size": 1025}}, 400, "invalid_request", "hyperparameters.batch_size"),
        ({"hyperparameters": {"learning_rate": 0}}, 400, "invalid_request", "hyperparameters.learning_rate"),
        ({"hyperparameters": {"learning_rate": 1.5}}, 400, "invalid_request", "hyperparameters.learning_rate"),
        ({"hyperparameters": {"max_seq_len": 15}}, 400, "invalid_request", "hyperparameters.max_seq_len"),
        ({"hyperparameters": {"max_seq_len": 65537}}, 400, "invalid_request", "hyperparameters.max_seq_len"),
        ({"hyperparameters": {"n_epochs": 1.5}}, 400, "invalid_request", "hyperparameters.n_epochs"),
        ({"precision": "fp8"}, 400, "invalid_request", "precision"),
        ({"seed": -1}, 400, "invalid_request", "seed"),
        ({"seed": 2**63}, 400, "invalid_request", "seed"),
        ({"suffix": LONG}, 400, "invalid_request", "suffix"),
        ({"suffix": "a\x00b"}, 400, "invalid_request", "suffix"),
        ({"suffix": "a/b"}, 400, "invalid_request", "suffix"),
        ({"suffix": "abc\u202egpj.exe"}, 400, "invalid_request", "suffix"),  # right-to-left override
        ({"suffix": "ünï"}, 400, "invalid_request", "suffix"),
        ({"suffix": "a" * 65}, 400, "invalid_request", "suffix"),
        # Numbers and booleans are taken only as JSON numbers and booleans, never as strings or each other.
        ({"hyperparameters": {"n_epochs": "1"}}, 400, "invalid_request", "hyperparameters.n_epochs"),
        ({"hyperparameters": {"n_epochs": True}}, 400, "invalid_request", "hyperparameters.n_epochs"),
        ({"hyperparameters": {"batch_size": 4.0}}, 400, "invalid_request", "hyperparameters.batch_size"),
        ({"hyperparameters": {"learning_rate": "0.1"}}, 400, "invalid_request", "hyperparameters.learning_rate"),
        ({"hyperparameters": {"learning_rate": True}}, 400, "invalid_request", "hyperparameters.learning_rate"),
        ({"hyperparameters": {"activation_recompute": 1}}, 400, "invalid_request", RECOMPUTE),
        ({"hyperparameters": {"activation_recompute": "true"}}, 400, "invalid_request", RECOMPUTE),
        ({"lora": {"r": "8"}}, 400, "invalid_request", "lora.r"),
        ({"lora": {"alpha": "16"}}, 400, "invalid_request", "lora.alpha"),
        ({"lora": {"train_ssm_params": "yes"}}, 400, "invalid_request", "lora.train_ssm_params"),
        ({"seed": "7"}, 400, "invalid_request", "seed"),
        ({"seed": False}, 400, "invalid_request", "seed"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, 400, "invalid_request", "metadata"),
        ({"metadata": {"k": 1}}, 400, "invalid_request", "metadata.k"),
        ({"method": {"type": "dpo"}}, 400, "invalid_request", "method.type"),
        ({"model": None}, 400, "invalid_request", "model"),
        ({"training_file": ""}, 400, "invalid_request", "training_file"),
        ({"integrations": [{}]}, 400, "invalid_request", "integrations[0].type"),
        (
            {"hyperparameters": {}, "method": {"type": "supervised", "supervised": {"hyperparameters": {}}}},
            400,
            "invalid_request",
            "method.supervised.hyperparameters",
        ),
    ],
)
def test_an_invalid_request_is_refused_and_creates_no_job(
    client: TestClient, training_file: str, broker: Broker, overrides: dict, status: int, code: str, param: str
) -> None:
    response = create(client, job_body(training_file, **overrides))

    assert response.status_code == status
    error = response.json()["error"]
    assert (error["code"], error["param"]) == (code, param)
    assert error["message"]
    assert client.get("/v1/fine_tuning/jobs").json()["data"] == []
    assert broker.enqueued == []


def test_whole_numbers_are_taken_for_decimal_fields_and_a_plain_suffix_is_kept(
    client: TestClient, training_file: str
) -> None:
    body = job_body(
        training_file, suffix="my-model_v1.2", lora={"alpha": 16, "dropout": 0}, hyperparameters={"learning_rate": 1}
    )

    response = create(client, body)

    assert response.status_code == 200, response.text
    job = response.json()
    assert (job["suffix"], job["lora"]["alpha"], job["hyperparameters"]["learning_rate"]) == ("my-model_v1.2", 16, 1)


def test_a_suffix_outside_the_allowed_characters_is_explained(client: TestClient, training_file: str) -> None:
    error = create(client, job_body(training_file, suffix="a/b")).json()["error"]

    assert error["param"] == "suffix"
    assert "letters, digits" in error["message"]


def test_an_invalid_target_names_the_valid_ones(client: TestClient, training_file: str) -> None:
    body = job_body(training_file, model="org/mamba2-tiny", lora={"target_modules": ["x_proj"]})

    message = create(client, body).json()["error"]["message"]

    assert "'x_proj' is not a LoRA target of mamba2 models" in message
    assert "in_proj, out_proj, embeddings, lm_head" in message


def test_dropout_on_kernel_read_targets_explains_the_fold(client: TestClient, training_file: str) -> None:
    body = job_body(training_file, lora={"dropout": 0.1, "target_modules": ["in_proj", "dt_proj", "out_proj"]})

    message = create(client, body).json()["error"]["message"]

    assert "dt_proj, out_proj" in message
    assert "folded into the weight" in message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"model": ', "The request body is not valid JSON"),
        (b"", "A JSON request body is required"),
        (b'{"model": "m", "training_file": "f", "hyperparameters": {"learning_rate": NaN}}', "finite number"),
        (b"[1, 2]", "Input should be a valid dictionary"),
    ],
)
def test_malformed_bodies_are_400_in_the_openai_shape(
    client: TestClient, training_file: str, content: bytes, message: str
) -> None:
    response = client.post("/v1/fine_tuning/jobs", content=content, headers={"Content-Type": "application/json"})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert message in response.json()["error"]["message"]


def test_a_file_uploaded_for_another_purpose_cannot_train(
    client: TestClient, settings: Settings, training_file: str
) -> None:
    # No upload route makes such a file yet; other services (evaluations) may.
    other_purpose = new_id("file")
    with session_scope(settings.database_url) as session:
        session.add(
            File(
                id=other_purpose,
                owner="alice",
                filename="b.jsonl",
                purpose="batch",
                bytes=1,
                created_at=now(),
                storage_key="files/b",
                format="text",
                line_count=1,
            )
        )

    response = create(client, job_body(training_file, validation_file=other_purpose))

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_file_purpose"
    assert response.json()["error"]["param"] == "validation_file"
