"""Initial schema: jobs, samples, votes, primes, guild_settings.

Revision ID: 0001
Revises:
Create Date: 2026-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copies of the model types: a migration must not change when the models do.
UTC_TIMESTAMP = sa.DateTime(timezone=True)
KINDS = "'generate', 'upsample', 'continue'"
STATUSES = "'queued', 'running', 'cancelling', 'succeeded', 'failed', 'cancelled'"


def upgrade() -> None:
    op.create_table(
        "guild_settings",
        sa.Column("guild_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("max_length_seconds", sa.Float(), nullable=True),
        sa.Column("max_samples_per_job", sa.Integer(), nullable=True),
        sa.Column("max_running_jobs_per_user", sa.Integer(), nullable=True),
        sa.Column("max_queued_jobs_per_user", sa.Integer(), nullable=True),
        sa.Column("allowed_channel_ids", sa.JSON(), nullable=True),
        sa.Column("updated_at", UTC_TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("guild_id", name="pk_guild_settings"),
    )
    op.create_table(
        "primes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=True),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("filename", sa.String(length=255), nullable=False),
        sa.Column("duration_seconds", sa.Float(), nullable=False),
        sa.Column("sample_rate", sa.Integer(), nullable=False),
        sa.Column("pcm", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_primes"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=True),
        sa.Column("channel_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("progress_message_id", sa.BigInteger(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("parent_sample_id", sa.Integer(), nullable=True),  # FK added once samples exists
        sa.Column("prime_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(length=255), nullable=True),
        sa.Column("lease_expires_at", UTC_TIMESTAMP, nullable=True),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("stage", sa.String(length=64), nullable=True),
        sa.Column("level", sa.Integer(), nullable=True),
        sa.Column("window", sa.Integer(), nullable=True),
        sa.Column("window_count", sa.Integer(), nullable=True),
        sa.Column("tokens_done", sa.BigInteger(), nullable=True),
        sa.Column("tokens_total", sa.BigInteger(), nullable=True),
        sa.Column("tokens_per_second", sa.Float(), nullable=True),
        sa.Column("eta_at", UTC_TIMESTAMP, nullable=True),
        sa.Column("checkpoint", sa.LargeBinary(), nullable=True),
        sa.Column("checkpoint_updated_at", UTC_TIMESTAMP, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.Column("started_at", UTC_TIMESTAMP, nullable=True),
        sa.Column("finished_at", UTC_TIMESTAMP, nullable=True),
        sa.Column("updated_at", UTC_TIMESTAMP, nullable=False),
        sa.CheckConstraint(f"kind IN ({KINDS})", name=op.f("ck_jobs_kind")),
        sa.CheckConstraint(f"status IN ({STATUSES})", name=op.f("ck_jobs_status")),
        sa.ForeignKeyConstraint(["prime_id"], ["primes.id"], name="fk_jobs_prime_id_primes"),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
    )
    op.create_index("ix_jobs_claim", "jobs", ["status", "model", "priority", "created_at", "id"])
    op.create_index("ix_jobs_guild", "jobs", ["guild_id", "status"])
    op.create_index("ix_jobs_user", "jobs", ["user_id", "status"])

    op.create_table(
        "samples",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("duration_seconds", sa.Float(), nullable=False),
        sa.Column("levels_mask", sa.Integer(), nullable=False),
        sa.Column("audio", sa.LargeBinary(), nullable=False),
        sa.Column("audio_format", sa.String(length=16), nullable=False),
        sa.Column("audio_bitrate", sa.Integer(), nullable=True),
        sa.Column("codes_level_0", sa.LargeBinary(), nullable=True),
        sa.Column("codes_level_1", sa.LargeBinary(), nullable=True),
        sa.Column("codes_level_2", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_samples_job_id_jobs"),
        sa.PrimaryKeyConstraint("id", name="pk_samples"),
        sa.UniqueConstraint("job_id", "index", name="uq_samples_job_id_index"),
    )
    op.create_index("ix_samples_created_at", "samples", ["created_at"])

    # jobs <-> samples reference each other; on SQLite batch mode rebuilds the (empty) table.
    with op.batch_alter_table("jobs") as batch:
        batch.create_foreign_key(
            "fk_jobs_parent_sample_id_samples", "samples", ["parent_sample_id"], ["id"]
        )

    op.create_table(
        "votes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTC_TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(["sample_id"], ["samples.id"], name="fk_votes_sample_id_samples"),
        sa.PrimaryKeyConstraint("id", name="pk_votes"),
        sa.UniqueConstraint("sample_id", "user_id", name="uq_votes_sample_id_user_id"),
    )


def downgrade() -> None:
    op.drop_table("votes")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint("fk_jobs_parent_sample_id_samples", type_="foreignkey")
    op.drop_index("ix_samples_created_at", table_name="samples")
    op.drop_table("samples")
    op.drop_index("ix_jobs_user", table_name="jobs")
    op.drop_index("ix_jobs_guild", table_name="jobs")
    op.drop_index("ix_jobs_claim", table_name="jobs")
    op.drop_table("jobs")
    op.drop_table("primes")
    op.drop_table("guild_settings")
