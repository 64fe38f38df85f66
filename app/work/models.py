"""The columns every leased kind of work carries, and the events of the kinds without a table of their own."""

from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, now


class LeaseStatus(StrEnum):
    """The two statuses a lease moves a row between; every leased kind's status enum spells them alike."""

    QUEUED = "queued"
    RUNNING = "running"


class LeasedColumns:
    """Mixed into a table whose rows a worker leases (jobs, evaluations, created models)."""

    started_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    finished_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # `lease_owner` is the lease holder (the worker attempt's id, `holder` in worker/lease.py), not the
    # tenant (`owner`); a running row whose lease expired is recovered by the reaper.
    lease_owner: Mapped[str | None] = mapped_column(String(256), nullable=True)
    lease_expires_at: Mapped[int | None] = mapped_column(BigInteger, nullable=True, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The resend clock: when the row was last sent to the queue (first after its insert commits), and how
    # many times since it was (re)queued it was sent again because nobody took it.
    queued_at: Mapped[int] = mapped_column(BigInteger, default=now)
    resends: Mapped[int] = mapped_column(Integer, default=0)


class WorkEvent(Base):
    """A state change or message of an evaluation or a model build (jobs keep theirs in `job_events`,
    which the API pages and streams)."""

    __tablename__ = "work_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))  # the lifecycle's name: evaluation | model
    subject_id: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    level: Mapped[str] = mapped_column(String(16), default="info")
    type: Mapped[str] = mapped_column(String(32))  # state | message
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
