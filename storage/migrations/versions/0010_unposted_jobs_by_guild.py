"""The bot's per-server "finished, results not posted" scan reads an index of only those jobs.

ix_jobs_guild_unposted: (guild_id, finished_at, id) of the jobs whose results_posted_at is NULL, a
partial index on both databases, in the order the scan lists them: it finds a server's first unposted
jobs without reading the server's other jobs nor sorting them. ix_jobs_unposted stays, for the same scan
of every server at once.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# Frozen copy of the model's condition: a migration must not change when the models do.
UNPOSTED = "results_posted_at IS NULL"


def upgrade() -> None:
    op.create_index(
        "ix_jobs_guild_unposted",
        "jobs",
        ["guild_id", "finished_at", "id"],
        sqlite_where=sa.text(UNPOSTED),
        postgresql_where=sa.text(UNPOSTED),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_guild_unposted", table_name="jobs")
