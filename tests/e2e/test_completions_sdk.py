"""Completions through the official `openai` SDK against `mambaft serve` (API and worker processes, keys
on): the base model and a fine-tuned job's model id, whole and streamed, and the SDK's errors for bad
input. One server for the module; the fine-tuning job trains on a slice of the demo chat data."""

import subprocess
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai import OpenAI

from app.settings import Settings

from .factories import MAMBAFT, clean_env, demo_slice, free_port
from .service import Service

JOB_TIMEOUT_S = 300
MAX_COMPLETION_TOKENS = 24
MAX_PROMPT_TOKENS = 200
QUESTION = [{"role": "system", "content": "You reverse words."}, {"role": "user", "content": "abcd"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, dict[str, str]]]:
    """`mambaft serve` with keys of alice and bob: (service, key by owner)."""
    folder = tmp_path_factory.mktemp("completions")
    settings = Settings(data_dir=folder / "var")
    assert settings.models_dir is not None
    env = clean_env(
        MAMBAFT_DATA_DIR=str(settings.data_dir),
        MAMBAFT_MAX_COMPLETION_TOKENS=str(MAX_COMPLETION_TOKENS),
        MAMBAFT_MAX_PROMPT_TOKENS=str(MAX_PROMPT_TOKENS),
    )
    subprocess.run([MAMBAFT, "migrate"], env=env, cwd=folder, check=True)
    keys = {
        owner: subprocess.run(
            [MAMBAFT, "create-key", "--owner", owner], env=env, cwd=folder, check=True, capture_output=True, text=True
        ).stdout.strip()
        for owner in ("alice", "bob")
    }
    service = Service(url=f"http://127.0.0.1:{free_port()}", models_dir=settings.models_dir, settings=settings, logs=[])
    port = service.url.rsplit(":", 1)[1]
    service.start(["serve", "--host", "127.0.0.1", "--port", port, "--data-dir", str(settings.data_dir)], env, folder)
    service.wait_ready(worker=True)
    yield service, keys
    service.stop()


def _client(served: tuple[Service, dict[str, str]], owner: str = "alice") -> OpenAI:
    service, keys = served
    # No retries: a 5xx or 429 must show, not be retried away.
    return OpenAI(base_url=f"{service.url}/v1", api_key=keys[owner], max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def fine_tuned(served: tuple[Service, dict[str, str]]) -> str:
    """The fine_tuned_model of alice's LoRA job on mamba-tiny, trained on chat data (one step)."""
    service, keys = served
    headers = {"Authorization": f"Bearer {keys['alice']}"}
    with httpx.Client(base_url=service.url, headers=headers, timeout=30) as client:
        upload = client.post(
            "/v1/files",
            files={"file": ("chat.jsonl", demo_slice("chat_train.jsonl", 8))},
            data={"purpose": "fine-tune"},
        )
        assert upload.status_code == 200, upload.text
        created = client.post(
            "/v1/fine_tuning/jobs",
            json={
                "model": "mamba-tiny",
                "training_file": upload.json()["id"],
                "suffix": "chat",
                # dt_proj and out_proj reach the model only through the merged weights while generating.
                "lora": {"r": 4, "alpha": 8, "target_modules": ["in_proj", "dt_proj", "out_proj"]},
                "hyperparameters": {"n_epochs": 1, "batch_size": 8, "max_seq_len": 64, "learning_rate": 1e-2},
            },
        )
        assert created.status_code == 200, created.text
        job_id = created.json()["id"]
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while (job := client.get(f"/v1/fine_tuning/jobs/{job_id}").json())["status"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, f"job {job_id} did not finish\n{service.log_tail()}"
            time.sleep(0.5)
    assert job["status"] == "succeeded", f"{job['error']}\n{service.log_tail()}"
    return job["fine_tuned_model"]


def test_a_base_model_completes_a_prompt_whole_and_streamed(served: tuple[Service, dict[str, str]]) -> None:
    client = _client(served)

    whole = client.completions.create(model="mamba-tiny", prompt="Hello", max_tokens=8, temperature=0)
    streamed = list(
        client.completions.create(model="mamba-tiny", prompt="Hello", max_tokens=8, temperature=0, stream=True)
    )

    assert whole.object == "text_completion" and whole.model == "mamba-tiny"
    choice = whole.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert whole.usage is not None
    assert whole.usage.prompt_tokens == 5  # one byte token each
    assert 1 <= whole.usage.completion_tokens <= 8
    # Greedy: the stream's pieces add up to the same text, and its last chunk says why it ended.
    assert "".join(chunk.choices[0].text for chunk in streamed) == choice.text
    assert streamed[-1].choices[0].finish_reason == choice.finish_reason


def test_a_fine_tuned_model_answers_a_chat_whole_and_streamed(
    served: tuple[Service, dict[str, str]], fine_tuned: str
) -> None:
    client = _client(served)

    whole = client.chat.completions.create(model=fine_tuned, messages=QUESTION, max_tokens=8, temperature=0)
    chunks = list(
        client.chat.completions.create(model=fine_tuned, messages=QUESTION, max_tokens=8, temperature=0, stream=True)
    )

    assert whole.object == "chat.completion" and whole.model == fine_tuned
    message = whole.choices[0].message
    assert message.role == "assistant" and isinstance(message.content, str)
    assert whole.usage is not None and whole.usage.completion_tokens >= 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    # The same conversation on the base model runs on the same loaded base, the adapter swapped out.
    base = client.chat.completions.create(model="mamba-tiny", messages=QUESTION, max_tokens=8, temperature=0)
    assert base.choices[0].message.content is not None


def test_bad_requests_raise_the_sdks_errors_naming_the_field(
    served: tuple[Service, dict[str, str]], fine_tuned: str
) -> None:
    client = _client(served)

    with pytest.raises(openai.BadRequestError) as too_many:
        client.completions.create(model="mamba-tiny", prompt="x", max_tokens=MAX_COMPLETION_TOKENS + 1)
    assert too_many.value.param == "max_tokens"
    with pytest.raises(openai.BadRequestError) as choices:
        client.chat.completions.create(model="mamba-tiny", messages=QUESTION, n=2)
    assert choices.value.param == "n"
    with pytest.raises(openai.BadRequestError) as long_prompt:  # counted in tokens, on the worker
        client.completions.create(model="mamba-tiny", prompt="x" * (MAX_PROMPT_TOKENS + 1), stream=True)
    assert (long_prompt.value.code, long_prompt.value.param) == ("context_length_exceeded", "prompt")
    with pytest.raises(openai.NotFoundError) as foreign:
        _client(served, "bob").chat.completions.create(model=fine_tuned, messages=QUESTION)
    assert foreign.value.code == "model_not_found"
