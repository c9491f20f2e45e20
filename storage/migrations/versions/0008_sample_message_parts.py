"""samples.message_parts_sent / _total / _limit: how far the posting of a sample split over several
messages got (`message_parts_sent` of `message_parts_total` messages out, split to fit an upload limit
of `message_parts_limit` bytes; the first one's id in `message_id`), so a later try sends only the rest,
split the same way, instead of the whole sample again. NULL: the sample went out whole (older rows,
and every sample posted in full), or was never posted.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("samples") as batch:
        batch.add_column(sa.Column("message_parts_sent", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("message_parts_total", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("message_parts_limit", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("samples") as batch:
        batch.drop_column("message_parts_limit")
        batch.drop_column("message_parts_total")
        batch.drop_column("message_parts_sent")
