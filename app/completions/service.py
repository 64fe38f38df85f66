"""Completion requests: which model a request names for its owner, its checks and limits, its row, and
handing it to a worker (after the row is committed, so the worker always finds it)."""

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.base_models import service as base_models
from app.completions.models import Completion, CompletionStatus
from app.completions.schemas import ChatCompletionCreate, CompletionCreate, request_fields
from app.db import new_id, now, session_scope
from app.errors import broker_unavailable, invalid_request, not_found
from app.jobs.models import Job
from app.limits import check_completion_slots
from app.queue import Broker
from app.settings import Settings

# OpenAI's default for /v1/completions; chat generates up to the limit unless told otherwise.
DEFAULT_COMPLETION_TOKENS = 16
# Every fine-tuned model id reads `{base}:ft-{suffix}:{job id}` (worker/job_runner.py names them).
FINE_TUNED_MARK = ":ft-"


def resolve_model(*, session: Session, settings: Settings, owner: str, model_id: str) -> tuple[str, str | None]:
    """(base model id, fine-tuning job id or None) for a model `owner` may run; raises model_not_found for
    anything else, another owner's models included."""
    if FINE_TUNED_MARK in model_id:
        job = session.get(Job, model_id.rpartition(":")[2])
        # fine_tuned_model is set only when a job succeeds, with its adapter stored.
        if job is None or job.owner != owner or job.fine_tuned_model != model_id or job.adapter_key is None:
            raise not_found("model_not_found", f"The model {model_id!r} does not exist", param="model")
        return job.model, job.id
    model = base_models.get_model(session=session, settings=settings, owner=owner, model_id=model_id)
    base_models.require_ready(model)
    return model.id, None


def _max_tokens(settings: Settings, body: CompletionCreate | ChatCompletionCreate) -> int:
    requested, param = body.max_tokens, "max_tokens"
    if isinstance(body, ChatCompletionCreate):
        if body.max_tokens is not None and body.max_completion_tokens is not None:
            raise invalid_request("Give max_tokens or max_completion_tokens, not both", param="max_completion_tokens")
        if body.max_completion_tokens is not None:
            requested, param = body.max_completion_tokens, "max_completion_tokens"
        default = settings.max_completion_tokens
    else:
        default = min(DEFAULT_COMPLETION_TOKENS, settings.max_completion_tokens)
    if requested is not None and requested > settings.max_completion_tokens:
        raise invalid_request(
            f"{param} is {requested}; this service generates at most {settings.max_completion_tokens} tokens",
            param=param,
        )
    return default if requested is None else requested


def create_completion(
    *, session: Session, settings: Settings, owner: str, body: CompletionCreate | ChatCompletionCreate
) -> Completion:
    """Check the request and record it (status queued); the caller's transaction commits the row."""
    if body.n != 1:
        raise invalid_request(f"n is {body.n}; this service generates one choice per request (n=1)", param="n")
    if isinstance(body, CompletionCreate) and isinstance(body.prompt, list) and len(body.prompt) != 1:
        raise invalid_request(f"prompt holds {len(body.prompt)} prompts; send one prompt per request", param="prompt")
    max_tokens = _max_tokens(settings, body)
    base_model, job_id = resolve_model(session=session, settings=settings, owner=owner, model_id=body.model)
    stamp = now()
    check_completion_slots(
        session=session,
        owner=owner,
        limit=settings.max_concurrent_completions,
        since=stamp - int(settings.completion_timeout_seconds),
    )
    row = Completion(
        id=new_id("cmpl"),
        owner=owner,
        model=body.model,
        base_model=base_model,
        job_id=job_id,
        request=request_fields(body, max_tokens),
        status=CompletionStatus.QUEUED,
        created_at=stamp,
    )
    session.add(row)
    return row


def send(*, settings: Settings, broker: Broker, completion_id: str) -> None:
    """Hand the committed request to a worker; when the broker cannot take it, fail the row (freeing its
    slot) and raise broker_unavailable."""
    try:
        broker.enqueue_completion(settings=settings, completion_id=completion_id)
    except Exception:  # whatever the broker client raises means "not queued"
        error = {"code": "broker_unavailable", "message": "the queue (broker) was unreachable"}
        finish_unstarted(settings=settings, completion_id=completion_id, status=CompletionStatus.FAILED, error=error)
        raise broker_unavailable() from None


def finish_unstarted(
    *, settings: Settings, completion_id: str, status: CompletionStatus, error: dict[str, str]
) -> bool:
    """Move a request no worker has claimed to `status`; False when a worker claimed it first."""
    with session_scope(settings.database_url) as session:
        moved = session.execute(
            update(Completion)
            .where(Completion.id == completion_id, Completion.status == CompletionStatus.QUEUED)
            .values(status=status, error=error, finished_at=now())
        )
        return moved.rowcount == 1
