"""Worker liveness: each worker process keeps one row, renewed every `heartbeat_seconds`; `/readyz`
reads the newest to tell whether any worker is alive to run the queue."""

from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base


class WorkerHeartbeat(Base):
    __tablename__ = "worker_heartbeats"

    # "host:pid", the prefix of every lease the worker holds (worker/lease.py).
    id: Mapped[str] = mapped_column(String(256), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(256))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[int] = mapped_column(BigInteger)
    last_seen: Mapped[int] = mapped_column(BigInteger, index=True)
