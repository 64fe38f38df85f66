"""Leased work: model builds are leased like jobs and evaluations, every kind has the resend clock, and
evaluations and model builds record events.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MODEL_LEASE_COLUMNS = ("started_at", "finished_at", "lease_owner", "lease_expires_at", "attempts")
CLOCK_COLUMNS = ("queued_at", "resends")


def _add_resend_clock(table: str) -> None:
    # Server defaults fill the rows that exist already; new rows get their values from the application.
    op.add_column(table, sa.Column("queued_at", sa.BigInteger(), nullable=False, server_default="0"))
    op.add_column(table, sa.Column("resends", sa.Integer(), nullable=False, server_default="0"))
    op.execute(f"UPDATE {table} SET queued_at = created_at")


def upgrade() -> None:
    _add_resend_clock("jobs")
    op.add_column("models", sa.Column("started_at", sa.BigInteger(), nullable=True))
    op.add_column("models", sa.Column("finished_at", sa.BigInteger(), nullable=True))
    op.add_column("models", sa.Column("lease_owner", sa.String(256), nullable=True))
    op.add_column("models", sa.Column("lease_expires_at", sa.BigInteger(), nullable=True))
    op.add_column("models", sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
    _add_resend_clock("models")
    op.create_index(op.f("ix_models_lease_expires_at"), "models", ["lease_expires_at"])
    # A build waiting for a worker was "creating"; the API still shows queued and running builds so.
    op.execute("UPDATE models SET status = 'queued' WHERE status = 'creating'")
    op.create_table(
        "work_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("subject_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("level", sa.String(16), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_work_events")),
    )
    op.create_index(op.f("ix_work_events_subject_id"), "work_events", ["subject_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_work_events_subject_id"), table_name="work_events")
    op.drop_table("work_events")
    op.execute("UPDATE models SET status = 'creating' WHERE status IN ('queued', 'running')")
    op.drop_index(op.f("ix_models_lease_expires_at"), table_name="models")
    # Batch mode: SQLite cannot drop columns in place everywhere.
    with op.batch_alter_table("models") as batch:
        for column in (*CLOCK_COLUMNS, *MODEL_LEASE_COLUMNS):
            batch.drop_column(column)
    with op.batch_alter_table("jobs") as batch:
        for column in CLOCK_COLUMNS:
            batch.drop_column(column)
