"""Cursor pagination, newest first, as every OpenAI list endpoint does it (`after`, `limit`, `has_more`)."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Generic, Literal, Protocol, TypeVar

from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Mapped, Session

from app.errors import invalid_request

T = TypeVar("T")

LimitQuery = Annotated[int, Query(ge=1, le=100, description="Page size")]
AfterQuery = Annotated[str | None, Query(max_length=128, description="Return objects after this id")]


class Timestamped(Protocol):
    id: Mapped[str]
    created_at: Mapped[int]


@dataclass(frozen=True)
class Page(Generic[T]):
    items: list[T]
    has_more: bool


class ListObject(BaseModel, Generic[T]):
    """The list envelope of every OpenAI list endpoint."""

    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool


def take_page(rows: Sequence[T], limit: int) -> Page[T]:
    """Cut rows fetched with `limit + 1`: the extra row only tells that another page exists."""
    return Page(items=list(rows[:limit]), has_more=len(rows) > limit)


def newest_first(
    *, session: Session, statement: Select[Any], entity: type[Timestamped], after: str | None, limit: int
) -> Page[Any]:
    """A page of `statement` ordered newest first, starting after the row whose id is `after`.

    `after` is looked up through `statement` itself, so it carries the caller's owner filter.
    """
    if after is not None:
        cursor = session.execute(statement.with_only_columns(entity.created_at).where(entity.id == after)).first()
        if cursor is None:
            raise invalid_request(f"No object with id {after!r} to page after", param="after")
        (created_at,) = cursor
        # Ids break ties between rows created in the same second, so the order is total.
        statement = statement.where(
            or_(entity.created_at < created_at, and_(entity.created_at == created_at, entity.id < after))
        )
    ordered = statement.order_by(entity.created_at.desc(), entity.id.desc()).limit(limit + 1)
    return take_page(session.scalars(ordered).all(), limit)
