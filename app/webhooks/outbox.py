"""Filling the webhook outbox: a state change queues one delivery per endpoint of its owner that takes its type,
in the transaction of the change itself, so a committed change always has its deliveries."""

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import new_id, now
from app.webhooks.models import WebhookDelivery, WebhookEndpoint


def record_state_change(
    session: Session, *, owner: str, object_: str, subject_id: str, status: str, previous: str, error: Any
) -> None:
    """Queue the `<object>.<status>` event of `subject_id` for each endpoint of `owner` taking it (caller commits)."""
    type_ = f"{object_}.{status}"
    endpoints = session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.owner == owner)).all()
    targets = [endpoint for endpoint in endpoints if endpoint.events is None or type_ in endpoint.events]
    if not targets:
        return
    stamp = now()
    event_id = new_id("evt")
    data = {"id": subject_id, "object": object_, "status": status, "previous_status": previous, "error": error}
    payload = {"id": event_id, "object": "event", "type": type_, "created_at": stamp, "data": data}
    session.add_all(
        WebhookDelivery(
            id=new_id("whdel"),
            endpoint_id=endpoint.id,
            event_id=event_id,
            event_type=type_,
            payload=payload,
            next_attempt_at=stamp,
            created_at=stamp,
        )
        for endpoint in targets
    )
