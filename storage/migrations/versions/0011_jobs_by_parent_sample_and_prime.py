"""Jobs found by the sample they upsample or continue, and by their prime clip, without a table scan.

ix_jobs_parent_sample_id: every Upsample click (and /upsample, /continue, `jobs retry`) asks, under the
enqueue lock, whether a job already upsamples the sample; ix_jobs_prime_id: dropping a clip a refused
request stored, and `jobs prune`, ask whether any job uses a clip. Both read every job before.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_jobs_parent_sample_id", "jobs", ["parent_sample_id"])
    op.create_index("ix_jobs_prime_id", "jobs", ["prime_id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_prime_id", table_name="jobs")
    op.drop_index("ix_jobs_parent_sample_id", table_name="jobs")
