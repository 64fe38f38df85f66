"""Sends due webhook deliveries: signed POSTs, retried with exponential backoff, then failed.

Runs in every worker (a daemon thread), so a delivery is taken only by a guarded UPDATE that re-checks
that it is still due and pushes it CLAIM_SECONDS ahead: another sender skips it, and one whose sender
died is due again then. A receiver may see an event twice (a sender that died after posting); the
`Mambaft-Event-Id` header lets it drop repeats.
"""

import json
import threading
from dataclasses import dataclass

import httpx
from sqlalchemy import select, update

from app.db import now, session_scope
from app.settings import Settings
from app.webhooks.models import DeliveryStatus, WebhookDelivery, WebhookEndpoint
from app.webhooks.signing import EVENT_ID_HEADER, SIGNATURE_HEADER, signature
from app.webhooks.targets import url_refusal
from worker.background import start_periodic

# Longer than any post may take (webhook_timeout_seconds is at most 30).
CLAIM_SECONDS = 60
BATCH = 50


@dataclass(frozen=True)
class _Claimed:
    id: str
    url: str
    secret: str
    event_id: str
    body: bytes
    attempts: int  # counting this one


@dataclass(frozen=True)
class _Outcome:
    status_code: int | None  # None: no answer
    error: str | None  # None: delivered (a 2xx)


def _claim(settings: Settings, delivery_id: str) -> _Claimed | None:
    """Take a due delivery for one attempt; None when another sender took it first."""
    stamp = now()  # not the pass's start: posts before this one may have taken a while
    with session_scope(settings.database_url) as session:
        taken = session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.status == DeliveryStatus.PENDING,
                WebhookDelivery.next_attempt_at <= stamp,
            )
            .values(next_attempt_at=stamp + CLAIM_SECONDS, attempts=WebhookDelivery.attempts + 1)
        )
        if taken.rowcount != 1:
            return None
        delivery, endpoint = session.execute(
            select(WebhookDelivery, WebhookEndpoint)
            .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
            .where(WebhookDelivery.id == delivery_id)
        ).one()
        body = json.dumps(delivery.payload, separators=(",", ":")).encode()
        return _Claimed(delivery.id, endpoint.url, endpoint.secret, delivery.event_id, body, delivery.attempts)


def _post(client: httpx.Client, settings: Settings, claimed: _Claimed) -> _Outcome:
    refusal = url_refusal(claimed.url, allow_private=settings.webhook_allow_private_targets)
    if refusal is not None:
        return _Outcome(None, refusal)
    headers = {
        "Content-Type": "application/json",
        EVENT_ID_HEADER: claimed.event_id,
        SIGNATURE_HEADER: signature(claimed.secret, now(), claimed.body),
    }
    try:
        response = client.post(
            claimed.url, content=claimed.body, headers=headers, timeout=settings.webhook_timeout_seconds
        )
    except httpx.HTTPError as error:
        return _Outcome(None, f"{type(error).__name__}: {error}")
    if response.is_success:
        return _Outcome(response.status_code, None)
    return _Outcome(response.status_code, f"the receiver answered HTTP {response.status_code}")


def _record(settings: Settings, claimed: _Claimed, outcome: _Outcome) -> None:
    """Mark the attempt: succeeded, failed after the last attempt, or due again after the backoff."""
    stamp = now()
    values: dict[str, object] = {
        "last_attempt_at": stamp,
        "last_status_code": outcome.status_code,
        "last_error": outcome.error,
    }
    if outcome.error is None:
        values |= {"status": DeliveryStatus.SUCCEEDED, "finished_at": stamp}
    elif claimed.attempts >= settings.webhook_max_attempts:
        values |= {"status": DeliveryStatus.FAILED, "finished_at": stamp}
    else:
        values["next_attempt_at"] = stamp + settings.webhook_retry_seconds * 2 ** (claimed.attempts - 1)
    with session_scope(settings.database_url) as session:
        session.execute(update(WebhookDelivery).where(WebhookDelivery.id == claimed.id).values(**values))


def deliver_due(*, settings: Settings, client: httpx.Client) -> list[str]:
    """One pass: an attempt at each due delivery this sender claims; returns the ids it attempted."""
    stamp = now()
    with session_scope(settings.database_url) as session:
        due = session.scalars(
            select(WebhookDelivery.id)
            .where(WebhookDelivery.status == DeliveryStatus.PENDING, WebhookDelivery.next_attempt_at <= stamp)
            .order_by(WebhookDelivery.next_attempt_at)
            .limit(BATCH)
        ).all()
    attempted = []
    for delivery_id in due:
        claimed = _claim(settings, delivery_id)
        if claimed is not None:
            _record(settings, claimed, _post(client, settings, claimed))
            attempted.append(delivery_id)
    return attempted


def start_webhook_sender(settings: Settings, stop: threading.Event) -> threading.Thread:
    """A daemon thread sending due deliveries every webhook_poll_seconds until `stop` is set."""

    def send() -> None:
        # No redirects: a public URL could otherwise send the post on to a private one.
        with httpx.Client(follow_redirects=False) as client:
            deliver_due(settings=settings, client=client)

    return start_periodic("mambaft-webhooks", settings.webhook_poll_seconds, send, stop)
