"""Evaluations: models or fine-tuning jobs scored on multiple-choice tasks by a worker.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEXED = ("created_at", "owner", "status")


def upgrade() -> None:
    op.create_table(
        "evaluations",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("model", sa.String(512), nullable=False),
        sa.Column("fine_tuning_job", sa.String(64), nullable=True),
        sa.Column("tasks", sa.JSON(), nullable=False),
        sa.Column("shots", sa.JSON(), nullable=False),
        sa.Column("precision", sa.String(8), nullable=False),
        sa.Column("validation_file", sa.String(64), nullable=True),
        sa.Column("reference_evaluation", sa.String(64), nullable=True),
        sa.Column("limit", sa.Integer(), nullable=True),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=True),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.Column("results", sa.JSON(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
    )
    for column in INDEXED:
        op.create_index(op.f(f"ix_evaluations_{column}"), "evaluations", [column])


def downgrade() -> None:
    for column in reversed(INDEXED):
        op.drop_index(op.f(f"ix_evaluations_{column}"), table_name="evaluations")
    op.drop_table("evaluations")
