"""A job's result files: the ids of its metrics CSV and loss curve (files of purpose fine-tune-results).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("result_files", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "result_files")
