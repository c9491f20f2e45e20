"""Results-posted tracking for the bot, and the Discord message each sample was posted in.

jobs.results_posted_at (+ ix_jobs_unposted) and samples.message_id. Jobs that had already
finished before this migration count as posted (at their finish time): the bot announced
them before it tracked posting here, and must not post them all again after the upgrade.

Revision ID: 0002
Revises: 0001
Create Date: 2026-01-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Frozen copies of the model types: a migration must not change when the models do.
UTC_TIMESTAMP = sa.DateTime(timezone=True)
FINISHED = ("succeeded", "failed", "cancelled")


def upgrade() -> None:
    # Adding a nullable column is a plain ALTER TABLE on both databases (no table rebuild).
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("results_posted_at", UTC_TIMESTAMP, nullable=True))
    op.create_index("ix_jobs_unposted", "jobs", ["results_posted_at", "status"])
    with op.batch_alter_table("samples") as batch:
        batch.add_column(sa.Column("message_id", sa.BigInteger(), nullable=True))

    jobs = sa.table(
        "jobs",
        sa.column("status", sa.String()),
        sa.column("finished_at", UTC_TIMESTAMP),
        sa.column("updated_at", UTC_TIMESTAMP),
        sa.column("results_posted_at", UTC_TIMESTAMP),
    )
    op.execute(
        jobs.update()
        .where(jobs.c.status.in_(FINISHED))
        .values(results_posted_at=sa.func.coalesce(jobs.c.finished_at, jobs.c.updated_at))
    )


def downgrade() -> None:
    # Dropping a column rebuilds the table on SQLite (batch mode); rows are copied over.
    with op.batch_alter_table("samples") as batch:
        batch.drop_column("message_id")
    op.drop_index("ix_jobs_unposted", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("results_posted_at")
