"""Uploaded training and validation files; the bytes live in object storage."""

from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base

# The purpose of the files a succeeded job produces (OpenAI's name); written by the worker, never uploaded.
FINE_TUNE_RESULTS = "fine-tune-results"


class File(Base):
    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(128), index=True)
    filename: Mapped[str] = mapped_column(String(1024))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(512))
    # Which of the three JSONL shapes an upload holds (text | prompt_completion | messages); csv | png for results.
    format: Mapped[str] = mapped_column(String(32))
    line_count: Mapped[int] = mapped_column(Integer)
