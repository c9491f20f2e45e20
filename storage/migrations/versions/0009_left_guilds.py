"""The left_guilds table: servers the bot was removed from, and when, until it is in them again. An
operator's retry refuses their jobs (the bot could not post their results), whatever they ended as.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# Frozen copy of the model type: a migration must not change when the models do.
UTC_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "left_guilds",
        sa.Column("guild_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("left_at", UTC_TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("guild_id", name="pk_left_guilds"),
    )


def downgrade() -> None:
    op.drop_table("left_guilds")
