"""Posting a job's results becomes a lease that expires: a bot killed mid-post no longer strands the rest.

jobs.results_posting_owner and jobs.results_posting_expires_at: the bot posting the results and until
when its claim holds; jobs.results_posted_at is now set only once everything went out. Jobs the 0002
code left half-posted (a bot killed between two samples: some samples have a message, others none)
are listed as unposted again, so the next bot posts the rest. Jobs whose samples all lack a message
stay as they are: they include every job announced before 0002 recorded messages.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Frozen copies of the model types: a migration must not change when the models do.
UTC_TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("results_posting_owner", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("results_posting_expires_at", UTC_TIMESTAMP, nullable=True))

    jobs = sa.table(
        "jobs",
        sa.column("id", sa.Integer()),
        sa.column("status", sa.String()),
        sa.column("results_posted_at", UTC_TIMESTAMP),
    )
    samples = sa.table("samples", sa.column("job_id", sa.Integer()), sa.column("message_id", sa.BigInteger()))

    def some_samples(posted: bool) -> sa.Exists:
        message = samples.c.message_id.is_not(None) if posted else samples.c.message_id.is_(None)
        return sa.exists().where(samples.c.job_id == jobs.c.id, message)

    op.execute(
        jobs.update()
        .where(
            jobs.c.status == "succeeded",
            jobs.c.results_posted_at.is_not(None),
            some_samples(posted=True),
            some_samples(posted=False),
        )
        .values(results_posted_at=None)
    )


def downgrade() -> None:
    # A claim in progress is dropped with its columns; the job stays listed as unposted.
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("results_posting_expires_at")
        batch.drop_column("results_posting_owner")
