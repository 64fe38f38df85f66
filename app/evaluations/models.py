"""Evaluations: a model or a fine-tuning job's result scored on multiple-choice tasks, run by a worker."""

from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, now


class EvaluationStatus(StrEnum):
    # queued -> running -> succeeded | failed; running -> queued when the worker was lost (lease expired).
    # Only workers and the reaper move an evaluation past queued.
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Evaluation(Base):
    __tablename__ = "evaluations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    model: Mapped[str] = mapped_column(String(512))  # the base model, also for a fine-tuning job's result
    fine_tuning_job: Mapped[str | None] = mapped_column(String(64), nullable=True)
    tasks: Mapped[list[str]] = mapped_column(JSON)  # shipped task names or the owner's file ids
    shots: Mapped[list[int]] = mapped_column(JSON)
    precision: Mapped[str] = mapped_column(String(8))
    validation_file: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reference_evaluation: Mapped[str | None] = mapped_column(String(64), nullable=True)
    limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    seed: Mapped[int] = mapped_column(BigInteger)

    status: Mapped[str] = mapped_column(String(32), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger, index=True)
    started_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    results: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)

    # Worker lease, as on jobs (`lease_owner` is the lease holder, not the tenant): a running evaluation
    # whose lease expired is requeued by the reaper.
    lease_owner: Mapped[str | None] = mapped_column(String(256), nullable=True)
    lease_expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The reaper's resend clock (jobs keep it in their events): when the evaluation was last sent to the
    # queue (first by the API, at insert), and how many times since then it was re-sent because nobody
    # took it.
    queued_at: Mapped[int] = mapped_column(BigInteger, default=now)
    resends: Mapped[int] = mapped_column(Integer, default=0)
