"""jobs.max_running_per_user: the user's running-jobs limit when the job was queued, which a claim
respects (a user's queued jobs wait while that many of theirs run). Nullable: older rows and jobs
queued without a limit run whenever a worker is free.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("max_running_per_user", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("max_running_per_user")
