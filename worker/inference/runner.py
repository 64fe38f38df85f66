"""`mambaft.run_completion`: generate the text of one completion request.

The API committed the request's row (queued) and then sent its id. This claims it (queued -> running; a
request the API already gave up on, or a duplicate delivery, is skipped), finds the model (a base, or a
succeeded job's adapter on its base), checks the prompt, records its token count (the API's sign that
generation started), appends the text as chunks while it generates, and records the outcome. Any failure
marks the request failed with a code, so the API never waits on a request nobody works on.
"""

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.completions.models import Completion, CompletionChunk, CompletionStatus
from app.db import now, session_scope
from app.jobs.models import Job
from app.settings import Settings
from app.storage import ObjectStorage, storage_from_settings
from worker.engine.data import chat_prompt
from worker.inference.generation import Generated, Sampling, generate
from worker.inference.loaded_models import LoadedModels
from worker.model_store import cached_archive, model_source

log = logging.getLogger(__name__)

# Text reaches the database at most this often: often enough to stream smoothly, rarely enough that a
# fast model does not spend its time committing.
FLUSH_SECONDS = 0.1
ADAPTER_CONFIG = "adapter_config.json"  # peft's name for it; a full fine-tuning job stored a whole model
MAX_ERROR_MESSAGE = 2000


class CompletionFailed(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class _Claimed:
    owner: str
    base_model: str
    job_id: str | None
    request: dict[str, Any]


def _claim(settings: Settings, completion_id: str) -> _Claimed | None:
    """Move the request from queued to running; None if it is not queued, or so old that its client was
    answered 504 already."""
    with session_scope(settings.database_url) as session:
        claimed = session.execute(
            update(Completion)
            .where(
                Completion.id == completion_id,
                Completion.status == CompletionStatus.QUEUED,
                Completion.created_at >= now() - int(settings.completion_timeout_seconds),
            )
            .values(status=CompletionStatus.RUNNING)
        )
        if claimed.rowcount != 1:
            return None
        row = session.get(Completion, completion_id)
        assert row is not None
        return _Claimed(row.owner, row.base_model, row.job_id, row.request)


def _sources(settings: Settings, storage: ObjectStorage, claimed: _Claimed) -> tuple[Path | str, Path | None]:
    """(where the base model loads from, the adapter folder or None)."""
    if claimed.job_id is not None:
        with session_scope(settings.database_url) as session:
            job = session.get(Job, claimed.job_id)
            key = None if job is None else job.adapter_key
        if key is None:
            raise CompletionFailed("model_not_found", f"the fine-tuning job {claimed.job_id} has no stored output")
        output = cached_archive(settings, storage, claimed.job_id, key)
        if not (output / ADAPTER_CONFIG).is_file():
            return output, None  # full fine-tuning: the job's output is the whole model
        base = model_source(settings=settings, storage=storage, owner=claimed.owner, model_id=claimed.base_model)
        return base, output
    return model_source(settings=settings, storage=storage, owner=claimed.owner, model_id=claimed.base_model), None


def _prompt(tokenizer: Any, request: dict[str, Any], limit: int) -> list[int]:
    if "messages" in request:
        ids = chat_prompt(request["messages"], tokenizer)
        what = "The conversation"
    else:
        ids = tokenizer(request["prompt"], add_special_tokens=False)["input_ids"]
        what = "The prompt"
    if len(ids) > limit:
        raise CompletionFailed(
            "context_length_exceeded", f"{what} is {len(ids)} tokens long; this service takes at most {limit}"
        )
    # An empty prompt continues from the start of a document, as OpenAI's does.
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return ids or [start]


class _Chunks:
    """Collects generated text and appends it to the request's chunks every FLUSH_SECONDS."""

    def __init__(self, settings: Settings, completion_id: str) -> None:
        self.settings, self.completion_id = settings, completion_id
        self.pending: list[str] = []
        self.flushed_at = time.monotonic()

    def add(self, text: str) -> None:
        self.pending.append(text)
        if time.monotonic() - self.flushed_at >= FLUSH_SECONDS:
            with session_scope(self.settings.database_url) as session:
                self.flush(session)

    def flush(self, session: Session) -> None:
        if self.pending:
            session.add(CompletionChunk(completion_id=self.completion_id, text="".join(self.pending)))
            self.pending = []
        self.flushed_at = time.monotonic()


def _update(settings: Settings, completion_id: str, **values: Any) -> None:
    with session_scope(settings.database_url) as session:
        session.execute(update(Completion).where(Completion.id == completion_id).values(**values))


def _fail(settings: Settings, completion_id: str, code: str, message: str) -> None:
    error = {"code": code, "message": message[:MAX_ERROR_MESSAGE]}
    _update(settings, completion_id, status=CompletionStatus.FAILED, error=error, finished_at=now())


def run_completion(*, settings: Settings, completion_id: str, models: LoadedModels) -> None:
    """Run one delivery of `mambaft.run_completion`."""
    claimed = _claim(settings, completion_id)
    if claimed is None:
        log.info("completion %s is not queued (or too old); ignoring this delivery", completion_id)
        return
    request = claimed.request
    chunks = _Chunks(settings, completion_id)
    try:
        model, tokenizer = models.get(*_sources(settings, storage_from_settings(settings), claimed))
        prompt = _prompt(tokenizer, request, settings.max_prompt_tokens)
        _update(settings, completion_id, prompt_tokens=len(prompt))
        sampling = Sampling(
            max_tokens=request["max_tokens"],
            temperature=request["temperature"],
            top_p=request["top_p"],
            stop=tuple(request["stop"]),
            seed=request["seed"],
        )
        result: Generated = generate(model, tokenizer, prompt, sampling, chunks.add)
    except CompletionFailed as error:  # told to the client as it is; no traceback to debug
        log.info("completion %s refused: %s", completion_id, error)
        _fail(settings, completion_id, error.code, str(error))
        return
    except Exception as error:
        log.exception("completion %s failed", completion_id)
        _fail(settings, completion_id, "completion_failed", str(error) or type(error).__name__)
        return
    with session_scope(settings.database_url) as session:
        chunks.flush(session)  # the last text and the outcome in one commit
        session.execute(
            update(Completion)
            .where(Completion.id == completion_id)
            .values(
                status=CompletionStatus.SUCCEEDED,
                completion_tokens=result.completion_tokens,
                finish_reason=result.finish_reason,
                finished_at=now(),
            )
        )
