"""Evaluation lease: a worker's claim on a running evaluation, and the reaper's resend clock.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("evaluations", sa.Column("lease_owner", sa.String(256), nullable=True))
    op.add_column("evaluations", sa.Column("lease_expires_at", sa.BigInteger(), nullable=True))
    # Server defaults fill the rows that exist already; new rows get their values from the application.
    op.add_column("evaluations", sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("evaluations", sa.Column("queued_at", sa.BigInteger(), nullable=False, server_default="0"))
    op.add_column("evaluations", sa.Column("resends", sa.Integer(), nullable=False, server_default="0"))
    op.execute("UPDATE evaluations SET queued_at = created_at")
    op.create_index(op.f("ix_evaluations_lease_expires_at"), "evaluations", ["lease_expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_evaluations_lease_expires_at"), table_name="evaluations")
    # Batch mode: SQLite cannot drop columns in place everywhere.
    with op.batch_alter_table("evaluations") as batch:
        for column in ("resends", "queued_at", "attempts", "lease_expires_at", "lease_owner"):
            batch.drop_column(column)
