"""Completions through the official `openai` SDK against `mambaft serve` (API and worker processes, keys
on): the base model and a fine-tuned job's model id, whole and streamed, and the SDK's errors for bad
input. One server for the module."""

from collections.abc import Iterator

import openai
import pytest
from openai import OpenAI

from app.archive import pack
from app.auth.service import create_api_key
from app.db import session_scope
from app.jobs.keys import adapter_key
from app.jobs.lifecycle import JobStatus
from app.jobs.models import Job
from app.storage import storage_from_settings

from .factories import clean_env, free_port, make_job, make_settings, random_adapter
from .service import Service

MAX_COMPLETION_TOKENS = 24
MAX_PROMPT_TOKENS = 200
QUESTION = [{"role": "system", "content": "You reverse words."}, {"role": "user", "content": "abcd"}]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, dict[str, str]]]:
    """`mambaft serve` with keys of alice and bob: (service, key by owner)."""
    folder = tmp_path_factory.mktemp("completions")
    settings = make_settings(folder / "var")  # migrated here, so the keys exist before the server starts
    assert settings.models_dir is not None
    with session_scope(settings.database_url) as session:
        keys = {owner: create_api_key(session=session, owner=owner)[1] for owner in ("alice", "bob")}
    env = clean_env(
        MAMBAFT_DATA_DIR=str(settings.data_dir),
        MAMBAFT_MAX_COMPLETION_TOKENS=str(MAX_COMPLETION_TOKENS),
        MAMBAFT_MAX_PROMPT_TOKENS=str(MAX_PROMPT_TOKENS),
    )
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
def fine_tuned(served: tuple[Service, dict[str, str]], tmp_path_factory: pytest.TempPathFactory) -> str:
    """The fine_tuned_model of a succeeded LoRA job of alice's on mamba-tiny, stored as the worker stores
    one (training it here would cost minutes; tests/e2e/test_service_e2e.py trains)."""
    service, _ = served
    settings, storage = service.settings, storage_from_settings(service.settings)
    job_id = make_job(settings, storage, owner="alice", status=JobStatus.SUCCEEDED)
    adapter = random_adapter(service.models_dir / "mamba-tiny", tmp_path_factory.mktemp("adapter") / "adapter")
    key = adapter_key(job_id)
    storage.put_file(key, pack(adapter, adapter.parent / "adapter.tar.gz"))
    model_id = f"mamba-tiny:ft-chat:{job_id}"
    with session_scope(settings.database_url) as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.adapter_key, job.fine_tuned_model = key, model_id
    return model_id


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

    def base_answer() -> str | None:
        return (
            client.chat.completions.create(model="mamba-tiny", messages=QUESTION, max_tokens=8, temperature=0)
            .choices[0]
            .message.content
        )

    before = base_answer()
    whole = client.chat.completions.create(model=fine_tuned, messages=QUESTION, max_tokens=8, temperature=0)
    chunks = list(
        client.chat.completions.create(model=fine_tuned, messages=QUESTION, max_tokens=8, temperature=0, stream=True)
    )

    assert whole.object == "chat.completion" and whole.model == fine_tuned
    message = whole.choices[0].message
    assert message.role == "assistant" and message.content != before  # the adapter is in
    assert whole.usage is not None and whole.usage.completion_tokens >= 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    # The worker swapped the adapter in on the loaded base, and out again without a trace.
    assert base_answer() == before


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
