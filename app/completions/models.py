"""Completion requests: the API writes one row per request, a worker claims it and appends the generated
text as chunks, then records the outcome; the API polls both to answer or stream."""

from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


class CompletionStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    # No worker claimed it in time: the API answered 503 and a worker that meets it later skips it.
    EXPIRED = "expired"


UNFINISHED = (CompletionStatus.QUEUED, CompletionStatus.RUNNING)


class Completion(Base):
    __tablename__ = "completions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    model: Mapped[str] = mapped_column(String(512))  # the id the client asked for
    base_model: Mapped[str] = mapped_column(String(512))  # the base it runs on
    job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # a fine-tuned model's job
    # {"prompt": str} or {"messages": [...]}, plus max_tokens, temperature, top_p, stop, seed.
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger, index=True)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    finish_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)  # stop | length
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # code, message


class CompletionChunk(Base):
    __tablename__ = "completion_chunks"

    # Monotonic: the stream's cursor.
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    completion_id: Mapped[str] = mapped_column(ForeignKey("completions.id", ondelete="CASCADE"), index=True)
    text: Mapped[str] = mapped_column(Text)
