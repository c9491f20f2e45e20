"""The left_guilds table: servers the bot was removed from, and when, until it is in them again. An
operator's retry refuses their jobs (the bot could not post their results), whatever they ended as.

Filled from what bots before it left: a server whose jobs were cancelled with the reason "the bot was
removed from this server" and where no job was queued after (the bot, at its next start, takes out the
servers it is in).

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
    # Frozen copies: the error text `cancel_guild_jobs` left on such jobs, and the columns read here.
    left_server_reason = "the bot was removed from this server"
    jobs = sa.table(
        "jobs",
        sa.column("guild_id", sa.BigInteger()),
        sa.column("status", sa.String()),
        sa.column("error", sa.Text()),
        sa.column("created_at", UTC_TIMESTAMP),
        sa.column("finished_at", UTC_TIMESTAMP),
    )
    later = jobs.alias("later")
    queued_since = (
        sa.select(later.c.guild_id)
        .where(later.c.guild_id == jobs.c.guild_id, later.c.created_at > jobs.c.finished_at)
        .exists()
    )
    left = (
        sa.select(jobs.c.guild_id, sa.func.max(jobs.c.finished_at))
        .where(
            jobs.c.status == "cancelled",
            jobs.c.error == left_server_reason,
            jobs.c.guild_id.is_not(None),
            jobs.c.finished_at.is_not(None),
            ~queued_since,
        )
        .group_by(jobs.c.guild_id)
    )
    left_guilds = sa.table("left_guilds", sa.column("guild_id", sa.BigInteger()), sa.column("left_at", UTC_TIMESTAMP))
    op.execute(left_guilds.insert().from_select(["guild_id", "left_at"], left))


def downgrade() -> None:
    op.drop_table("left_guilds")
