"""Evaluations: a model or a fine-tuning job's result scored on multiple-choice tasks, run by a worker."""

from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base
from app.work.models import LeasedColumns, LeaseStatus


class EvaluationStatus(StrEnum):
    # queued -> running -> succeeded | failed; running -> queued when the worker was lost (lease expired).
    # Only workers and the reaper move an evaluation past queued.
    QUEUED = LeaseStatus.QUEUED.value
    RUNNING = LeaseStatus.RUNNING.value
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Evaluation(LeasedColumns, Base):
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
    results: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
