"""Webhook endpoints (create, list, delete) and their delivery log, each scoped to its owner."""

import secrets

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.db import new_id, now
from app.errors import invalid_request, not_found
from app.evaluations.lifecycle import EVALUATIONS
from app.jobs.lifecycle import JOBS
from app.pagination import Page, newest_first
from app.settings import Settings
from app.webhooks.models import WebhookDelivery, WebhookEndpoint
from app.webhooks.schemas import WebhookCreate, WebhookCreated
from app.webhooks.targets import url_refusal

EVENT_TYPES = frozenset(f"{kind.webhook_object}.{status}" for kind in (JOBS, EVALUATIONS) for status in kind.allowed)


def create_endpoint(*, session: Session, settings: Settings, owner: str, request: WebhookCreate) -> WebhookCreated:
    """A new endpoint of the owner, with its signing secret (shown only here)."""
    refusal = url_refusal(request.url, allow_private=settings.webhook_allow_private_targets)
    if refusal is not None:
        raise invalid_request(refusal, param="url", code="invalid_webhook_url")
    unknown = sorted(set(request.events or ()) - EVENT_TYPES)
    if unknown:
        raise invalid_request(
            f"Unknown event types {unknown}; known: {sorted(EVENT_TYPES)}", param="events", code="invalid_event_type"
        )
    endpoint = WebhookEndpoint(
        id=new_id("wh"),
        owner=owner,
        url=request.url,
        secret=f"whsec_{secrets.token_hex(24)}",
        events=sorted(set(request.events)) if request.events else None,
        created_at=now(),
    )
    session.add(endpoint)
    session.flush()
    return WebhookCreated(
        id=endpoint.id, url=endpoint.url, events=endpoint.events, created_at=endpoint.created_at, secret=endpoint.secret
    )


def get_endpoint(*, session: Session, owner: str, webhook_id: str) -> WebhookEndpoint:
    """The owner's endpoint with this id; another owner's is as absent as a missing one."""
    endpoint = session.scalar(
        select(WebhookEndpoint).where(WebhookEndpoint.owner == owner, WebhookEndpoint.id == webhook_id)
    )
    if endpoint is None:
        raise not_found("webhook_not_found", f"No webhook with id {webhook_id!r}", param="webhook_id")
    return endpoint


def list_endpoints(*, session: Session, owner: str, after: str | None, limit: int) -> Page[WebhookEndpoint]:
    """The owner's endpoints, newest first."""
    statement = select(WebhookEndpoint).where(WebhookEndpoint.owner == owner)
    return newest_first(session=session, statement=statement, entity=WebhookEndpoint, after=after, limit=limit)


def delete_endpoint(*, session: Session, owner: str, webhook_id: str) -> None:
    """Delete the owner's endpoint and its deliveries: nothing more is sent to it."""
    endpoint = get_endpoint(session=session, owner=owner, webhook_id=webhook_id)
    # Explicit, not left to the foreign key: SQLite enforces ON DELETE CASCADE only with a pragma.
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id))
    session.delete(endpoint)


def list_deliveries(
    *, session: Session, owner: str, webhook_id: str, after: str | None, limit: int
) -> Page[WebhookDelivery]:
    """The delivery log of the owner's endpoint, newest first."""
    endpoint = get_endpoint(session=session, owner=owner, webhook_id=webhook_id)
    statement = select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint.id)
    return newest_first(session=session, statement=statement, entity=WebhookDelivery, after=after, limit=limit)
