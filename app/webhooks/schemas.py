"""Shapes of the webhooks API."""

from typing import Any, Literal

from pydantic import BaseModel, Field

from app.jobs.schemas import STRICT, LongName, Name
from app.webhooks.models import WebhookDelivery, WebhookEndpoint


class WebhookCreate(BaseModel):
    model_config = STRICT

    url: LongName
    # Event types to send (`fine_tuning.job.succeeded`, `evaluation.failed`, ...); left out: all of them.
    events: list[Name] | None = Field(default=None, min_length=1, max_length=32)


class WebhookObject(BaseModel):
    id: str
    object: Literal["webhook"] = "webhook"
    url: str
    events: list[str] | None
    created_at: int

    @classmethod
    def of(cls, endpoint: WebhookEndpoint) -> "WebhookObject":
        return cls(id=endpoint.id, url=endpoint.url, events=endpoint.events, created_at=endpoint.created_at)


class WebhookCreated(WebhookObject):
    """The create response: the only one that shows the signing secret."""

    secret: str


class WebhookDeleted(BaseModel):
    id: str
    object: Literal["webhook"] = "webhook"
    deleted: Literal[True] = True


class DeliveryObject(BaseModel):
    id: str
    object: Literal["webhook.delivery"] = "webhook.delivery"
    event_id: str
    event_type: str
    status: str
    attempts: int
    next_attempt_at: int | None  # None once it succeeded or failed
    last_attempt_at: int | None
    last_status_code: int | None
    last_error: str | None
    created_at: int
    finished_at: int | None
    payload: dict[str, Any]

    @classmethod
    def of(cls, delivery: WebhookDelivery) -> "DeliveryObject":
        return cls(
            id=delivery.id,
            event_id=delivery.event_id,
            event_type=delivery.event_type,
            status=delivery.status,
            attempts=delivery.attempts,
            next_attempt_at=None if delivery.finished_at is not None else delivery.next_attempt_at,
            last_attempt_at=delivery.last_attempt_at,
            last_status_code=delivery.last_status_code,
            last_error=delivery.last_error,
            created_at=delivery.created_at,
            finished_at=delivery.finished_at,
            payload=delivery.payload,
        )
