"""jobs.lease_seconds and jobs.lease_lapse_ends_at: a lease that ran out is taken over only a lease
after a recovery pass first saw it run out, so that a worker cut off from the database (which a
recovery pass may not have noticed) renews it first. Nullable: no lease, or one taken before this
revision (taken over at once, as before).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("lease_seconds", sa.Float(), nullable=True))
        batch.add_column(sa.Column("lease_lapse_ends_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("lease_lapse_ends_at")
        batch.drop_column("lease_seconds")
