"""Idempotency records name the object they created, so deleting the object drops its record.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

records = sa.table(
    "idempotency_keys", sa.column("id", sa.Integer()), sa.column("response", sa.JSON()), sa.column("object_id")
)


def upgrade() -> None:
    op.add_column("idempotency_keys", sa.Column("object_id", sa.String(64), nullable=True))
    op.create_index(op.f("ix_idempotency_keys_object_id"), "idempotency_keys", ["object_id"])
    # Every stored response is an object with its id, read here rather than in SQL, whose JSON operators
    # differ between SQLite and Postgres.
    connection = op.get_bind()
    for row in connection.execute(sa.select(records.c.id, records.c.response)).all():
        connection.execute(
            records.update().where(records.c.id == row.id).values(object_id=(row.response or {}).get("id"))
        )


def downgrade() -> None:
    op.drop_index(op.f("ix_idempotency_keys_object_id"), table_name="idempotency_keys")
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.drop_column("object_id")
