"""Completion requests and their generated chunks (POST /v1/completions, /v1/chat/completions).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "completions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("model", sa.String(512), nullable=False),
        sa.Column("base_model", sa.String(512), nullable=False),
        sa.Column("job_id", sa.String(64), nullable=True),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("finish_reason", sa.String(16), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_completions")),
    )
    for column in ("owner", "status", "created_at"):
        op.create_index(op.f(f"ix_completions_{column}"), "completions", [column])
    op.create_table(
        "completion_chunks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("completion_id", sa.String(64), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["completion_id"],
            ["completions.id"],
            name=op.f("fk_completion_chunks_completion_id_completions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_completion_chunks")),
    )
    op.create_index(op.f("ix_completion_chunks_completion_id"), "completion_chunks", ["completion_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_completion_chunks_completion_id"), table_name="completion_chunks")
    op.drop_table("completion_chunks")
    for column in ("created_at", "status", "owner"):
        op.drop_index(op.f(f"ix_completions_{column}"), table_name="completions")
    op.drop_table("completions")
