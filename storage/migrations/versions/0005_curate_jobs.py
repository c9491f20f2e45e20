"""Jobs of kind 'curate': samples the bot joined into one piece (`/curate`), stored like a job's result.

Only the CHECK constraint on jobs.kind changes. SQLite cannot alter a constraint, so batch mode
rebuilds the table there; Postgres drops and re-creates the constraint. Downgrading refuses while
curate jobs exist rather than deleting what users made.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Frozen copies of the allowed kinds: a migration must not change when the models do.
KINDS_BEFORE = "'generate', 'upsample', 'continue'"
KINDS_AFTER = "'generate', 'upsample', 'continue', 'curate'"
CONSTRAINT = "ck_jobs_kind"


def _set_kinds(kinds: str) -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f(CONSTRAINT), type_="check")
        batch.create_check_constraint(op.f(CONSTRAINT), sa.text(f"kind IN ({kinds})"))


def upgrade() -> None:
    _set_kinds(KINDS_AFTER)


def downgrade() -> None:
    jobs = sa.table("jobs", sa.column("kind", sa.String()))
    curated = op.get_bind().scalar(sa.select(sa.func.count()).select_from(jobs).where(jobs.c.kind == "curate"))
    if curated:
        raise RuntimeError(
            f"{curated} curate job(s) exist: an older jukebot cannot hold them. Delete them (and their "
            "samples and votes) first if you really want to downgrade."
        )
    _set_kinds(KINDS_BEFORE)
