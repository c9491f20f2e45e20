"""Migrations build exactly the models' schema on both databases, and undo it."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy import inspect
from sqlalchemy.engine import make_url

import storage.engine
import storage.migrate
from jukebot.cli import main
from jukebot.commands import database_problem
from jukebot.settings import load_settings
from storage.engine import create_engine
from storage.errors import JobNotRetryable
from storage.migrate import (
    MIGRATION_LOCK_KEY,
    MigrationBlocked,
    NoRoomToMigrate,
    UnknownSchemaRevision,
    current_revision_async,
    downgrade_async,
    schema_diff,
    schema_diff_async,
    upgrade_async,
    upgrade_to_head_async,
)
from storage.models import Base, JobStatus, UTCDateTime
from storage.store import JobStore
from tests.conftest import FakeClock
from tests.waiting import wait_until

TABLES = {"jobs", "samples", "votes", "primes", "guild_settings", "workers", "left_guilds"}


async def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return set(await connection.run_sync(lambda sync: inspect(sync).get_table_names()))
    finally:
        await engine.dispose()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    from storage.migrate import alembic_config

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


async def test_empty_to_head_matches_models_and_downgrades_to_base(empty_db_url: str) -> None:
    assert await table_names(empty_db_url) == set()
    assert await current_revision_async(empty_db_url) is None

    await upgrade_to_head_async(empty_db_url)
    assert await table_names(empty_db_url) == TABLES | {"alembic_version"}
    assert await current_revision_async(empty_db_url) == head_revision()
    # `alembic check` clean: the migrated schema is exactly the models.
    assert await schema_diff_async(empty_db_url) == []

    await upgrade_to_head_async(empty_db_url)  # idempotent
    await downgrade_async(empty_db_url, "base")
    assert await table_names(empty_db_url) == {"alembic_version"}
    assert await current_revision_async(empty_db_url) is None
    missing = {diff[1].name for diff in await schema_diff_async(empty_db_url) if diff[0] == "add_table"}
    assert missing == TABLES

    await upgrade_to_head_async(empty_db_url)
    assert await schema_diff_async(empty_db_url) == []


T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
FINISHED_AT = datetime(2025, 1, 1, 13, 0, tzinfo=UTC)

# The 0001 columns a row needs, frozen here: the models have moved on since.
JOBS_0001 = sa.table(
    "jobs",
    *(sa.column(name, sa.Integer()) for name in ("id", "priority", "attempts", "max_attempts")),
    *(sa.column(name, sa.BigInteger()) for name in ("channel_id", "user_id")),
    *(sa.column(name, sa.String()) for name in ("kind", "model", "status")),
    sa.column("params", sa.JSON()),
    sa.column("progress", sa.Float()),
    *(sa.column(name, UTCDateTime()) for name in ("created_at", "updated_at", "finished_at")),
)
SAMPLES_0001 = sa.table(
    "samples",
    *(sa.column(name, sa.Integer()) for name in ("id", "job_id", "index", "levels_mask")),
    *(sa.column(name, sa.String()) for name in ("model", "audio_format")),
    sa.column("seed", sa.BigInteger()),
    sa.column("duration_seconds", sa.Float()),
    sa.column("audio", sa.LargeBinary()),
    sa.column("created_at", UTCDateTime()),
)


async def _read(url: str, statement: sa.Select[Any]) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return [tuple(row) for row in await connection.execute(statement)]
    finally:
        await engine.dispose()


async def _columns(url: str) -> dict[str, set[str]]:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:

            def names(sync: Any) -> dict[str, set[str]]:
                inspector = inspect(sync)
                return {t: {c["name"] for c in inspector.get_columns(t)} for t in inspector.get_table_names()}

            return await connection.run_sync(names)
    finally:
        await engine.dispose()


async def test_concurrent_upgrades_of_an_empty_database_both_succeed(
    empty_db_url: str, tmp_path: Path
) -> None:
    # Bot and worker start together and both migrate: the second waits for the first.
    env = {**os.environ, "DATABASE_URL": empty_db_url, "PYTHONPATH": str(Path(__file__).parents[2])}
    upgrades = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "jukebot",
            "db",
            "upgrade",
            env=env,
            cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        for _ in range(2)
    ]
    outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in upgrades)), timeout=120)
    assert [p.returncode for p in upgrades] == [0, 0], [out.decode()[-2000:] for out, _ in outputs]
    assert await current_revision_async(empty_db_url) == head_revision()
    assert await schema_diff_async(empty_db_url) == []


async def test_a_migration_waits_for_another_longer_than_a_statement_may_take(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Statements are bounded on Postgres (a silent network must not hang a caller), but a migrator
    waits for another process's migration however long that takes, whatever lock_timeout the database
    or its role sets (a managed Postgres may)."""
    if not empty_db_url.startswith("postgresql"):
        pytest.skip("only Postgres migrations wait for each other (SQLite has its busy timeout)")
    monkeypatch.setattr(storage.engine, "POSTGRES_STATEMENT_TIMEOUT_SECONDS", 0.5)
    bounded = create_engine(empty_db_url)
    try:
        async with bounded.connect() as connection:
            name = make_url(empty_db_url).database
            await connection.exec_driver_sql(f"ALTER DATABASE \"{name}\" SET lock_timeout = '300ms'")
            await connection.commit()
        with pytest.raises(TimeoutError):
            async with bounded.connect() as connection:
                await connection.exec_driver_sql("SELECT pg_sleep(1.5)")
        async with bounded.connect() as other_migrator:
            await other_migrator.exec_driver_sql(f"SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})")
            upgrading = asyncio.create_task(upgrade_to_head_async(empty_db_url))

            async def waiting() -> bool:
                async with bounded.connect() as connection:
                    waiters = await connection.exec_driver_sql(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    )
                    return bool(waiters.scalar())

            await wait_until(waiting, 30.0, "the migrator to wait for the other one")
            await asyncio.sleep(1.5)  # longer than a statement may take: the wait itself is the input
            assert not upgrading.done()
            await other_migrator.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})")
        await asyncio.wait_for(upgrading, 60)
    finally:
        await bounded.dispose()
    assert await current_revision_async(empty_db_url) == head_revision()
    said = [r.getMessage() for r in caplog.records if r.name == "storage.migrate"]
    assert said == ["waiting for another process's schema change of this database to end"], said


async def test_0002_keeps_rows_counts_finished_jobs_as_posted_and_downgrades(empty_db_url: str) -> None:
    """Upgrading a database with jobs in it must not make the bot post old results again."""
    url = empty_db_url
    await upgrade_async(url, "0001")
    common = {"channel_id": 1, "user_id": 2, "kind": "generate", "model": "5b", "params": {"seed": 1}}
    common |= {"priority": 0, "attempts": 0, "max_attempts": 3, "progress": 0.0}
    common |= {"created_at": T0, "updated_at": T0}
    sample = {"id": 1, "job_id": 1, "index": 0, "levels_mask": 4, "model": "5b", "audio_format": "ogg"}
    sample |= {"seed": 7, "duration_seconds": 1.0, "audio": b"OggS", "created_at": T0}
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                JOBS_0001.insert(),
                [
                    {**common, "id": 1, "status": "succeeded", "finished_at": FINISHED_AT},
                    {**common, "id": 2, "status": "queued", "finished_at": None},
                    {**common, "id": 3, "status": "cancelled", "finished_at": None},
                ],
            )
            await connection.execute(SAMPLES_0001.insert(), [sample])
    finally:
        await engine.dispose()

    await upgrade_to_head_async(url)
    assert await schema_diff_async(url) == []
    posted = sa.table("jobs", sa.column("id"), sa.column("results_posted_at", UTCDateTime()))
    assert await _read(url, sa.select(posted).order_by(posted.c.id)) == [
        (1, FINISHED_AT),  # finished before the upgrade: the bot already announced it
        (2, None),
        (3, T0),  # no finish time recorded: its last update stands in
    ]
    messages = sa.table("samples", sa.column("id"), sa.column("message_id"), sa.column("audio"))
    assert await _read(url, sa.select(messages)) == [(1, None, b"OggS")]

    await downgrade_async(url, "0001")
    assert await current_revision_async(url) == "0001"
    columns = await _columns(url)
    assert "results_posted_at" not in columns["jobs"] and "message_id" not in columns["samples"]
    assert await _read(url, sa.select(JOBS_0001.c.id, JOBS_0001.c.status).order_by(JOBS_0001.c.id)) == [
        (1, "succeeded"),
        (2, "queued"),
        (3, "cancelled"),
    ]
    assert await _read(url, sa.select(SAMPLES_0001.c.id, SAMPLES_0001.c.audio)) == [(1, b"OggS")]
    # SQLite rebuilt both tables on the way down: constraints and indexes must have survived.
    await upgrade_to_head_async(url)
    assert await schema_diff_async(url) == []


async def test_0003_lists_half_posted_results_again_and_downgrades(empty_db_url: str) -> None:
    """A bot killed between two samples under 0002 left the job marked posted: 0003 lets the next
    bot post the rest. Jobs with no sample message at all may be older than 0002: they stay."""
    url = empty_db_url
    await upgrade_async(url, "0002")
    common = {"channel_id": 1, "user_id": 2, "kind": "generate", "model": "5b", "params": {"seed": 1}}
    common |= {"priority": 0, "attempts": 0, "max_attempts": 3, "progress": 0.0, "status": "succeeded"}
    common |= {"created_at": T0, "updated_at": T0, "finished_at": FINISHED_AT}
    sample = {"levels_mask": 4, "model": "5b", "audio_format": "ogg", "seed": 7, "duration_seconds": 1.0}
    sample |= {"audio": b"OggS", "created_at": T0}
    messages = {  # job id -> its samples' message ids
        1: [101, None, None],  # killed after the first sample
        2: [None, None],  # announced before 0002 recorded messages
        3: [301, 302],  # all out
    }
    jobs = sa.table(
        "jobs",
        *(sa.column(c.name, c.type) for c in JOBS_0001.c),
        sa.column("results_posted_at", UTCDateTime()),
    )
    samples = sa.table(
        "samples",
        *(sa.column(c.name, c.type) for c in SAMPLES_0001.c),
        sa.column("message_id", sa.BigInteger()),
    )
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                jobs.insert(),
                [{**common, "id": job_id, "results_posted_at": FINISHED_AT} for job_id in messages],
            )
            await connection.execute(
                samples.insert(),
                [
                    {
                        **sample,
                        "id": job_id * 10 + index,
                        "job_id": job_id,
                        "index": index,
                        "message_id": message,
                    }
                    for job_id, ids in messages.items()
                    for index, message in enumerate(ids)
                ],
            )
    finally:
        await engine.dispose()

    await upgrade_to_head_async(url)
    assert await schema_diff_async(url) == []
    assert await _read(url, sa.select(jobs.c.id, jobs.c.results_posted_at).order_by(jobs.c.id)) == [
        (1, None),
        (2, FINISHED_AT),
        (3, FINISHED_AT),
    ]
    assert await _read(url, sa.select(samples.c.message_id).order_by(samples.c.id)) == [
        (message,) for ids in messages.values() for message in ids
    ]

    await downgrade_async(url, "0002")
    columns = await _columns(url)
    assert not {"results_posting_owner", "results_posting_expires_at"} & columns["jobs"]
    assert await _read(url, sa.select(jobs.c.id, jobs.c.status).order_by(jobs.c.id)) == [
        (job_id, "succeeded") for job_id in messages
    ]
    await upgrade_to_head_async(url)
    assert await schema_diff_async(url) == []


async def test_schema_diff_sees_a_drifted_schema(empty_db_url: str) -> None:
    """The comparison is not vacuous: an index dropped by hand shows up."""
    db_url = empty_db_url
    await upgrade_to_head_async(db_url)
    engine = create_engine(db_url)
    try:
        async with engine.begin() as connection:
            await connection.exec_driver_sql("DROP INDEX ix_samples_created_at")
    finally:
        await engine.dispose()
    diffs = await schema_diff_async(db_url)
    assert [diff[0] for diff in diffs] == ["add_index"]
    assert diffs[0][1].name == "ix_samples_created_at"


def test_cli_db_upgrade_creates_the_tables(
    empty_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("JUKEBOT_DATABASE_URL", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env
    url = make_url(empty_db_url)
    # Users type plain URLs; settings pick the async driver.
    plain = url.set(drivername=url.get_backend_name()).render_as_string(hide_password=False)
    monkeypatch.setenv("DATABASE_URL", plain)

    result = CliRunner().invoke(main, ["db", "upgrade"], catch_exceptions=False)

    assert result.exit_code == 0, result.output
    assert result.output.endswith(
        f" was at schema none (no jukebot tables yet) and is now at the latest schema ({head_revision()})\n"
    )
    assert schema_diff(empty_db_url) == []
    again = CliRunner().invoke(main, ["db", "upgrade"], catch_exceptions=False)
    assert (again.exit_code, again.output.split(" is ", 1)[1]) == (
        0,
        f"already at the latest schema ({head_revision()}): nothing to migrate\n",
    )
    if url.get_backend_name() == "sqlite":
        assert url.database is not None
        with sqlite3.connect(url.database) as connection:
            names = {
                row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        assert TABLES <= names


def test_cli_db_upgrade_says_which_schema_it_migrated_from(
    empty_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JUKEBOT_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("DATABASE_URL", empty_db_url)
    asyncio.run(upgrade_async(empty_db_url, "0001"))

    result = CliRunner().invoke(main, ["db", "upgrade"], catch_exceptions=False)

    assert result.exit_code == 0, result.output
    assert result.output.endswith(
        f" was at schema 0001 and is now at the latest schema ({head_revision()})\n"
    )
    assert schema_diff(empty_db_url) == []


def test_migrations_ship_inside_the_package() -> None:
    import storage

    versions = Path(storage.__file__).parent / "migrations" / "versions"
    assert (versions.parent / "env.py").is_file()
    assert {"0001_", "0002_"} <= {path.name[:5] for path in versions.glob("*.py")}
    assert {table.name for table in Base.metadata.sorted_tables} == TABLES


def test_storage_imports_nothing_else_of_ours() -> None:
    code = (
        "import sys, storage, storage.migrate, storage.store\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'bot', 'sampler', 'jukebot'}))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"


async def test_0005_allows_curate_jobs_and_refuses_to_downgrade_over_them(empty_db_url: str) -> None:
    url = empty_db_url
    job = {"channel_id": 1, "user_id": 2, "model": "5b", "params": {}, "status": "succeeded"}
    job |= {"priority": 0, "attempts": 0, "max_attempts": 1, "progress": 1.0}
    job |= {"created_at": T0, "updated_at": T0, "finished_at": FINISHED_AT}

    async def insert(**values: Any) -> None:
        engine = create_engine(url)
        try:
            async with engine.begin() as connection:
                await connection.execute(JOBS_0001.insert(), [{**job, **values}])
        finally:
            await engine.dispose()

    await upgrade_async(url, "0004")
    with pytest.raises(sa.exc.IntegrityError):  # the old CHECK constraint
        await insert(id=1, kind="curate")
    await upgrade_async(url, "0005")
    await insert(id=1, kind="curate")
    await insert(id=2, kind="generate")
    # what 0005 leaves differs from the models only by the columns later revisions add
    diffs = await schema_diff_async(url)
    assert sorted(diff[1].name for diff in diffs if diff[0] == "add_table") == ["left_guilds"]
    assert sorted(diff[1].name for diff in diffs if diff[0] == "add_index") == [
        "ix_jobs_guild_unposted",
        "ix_jobs_parent_sample_id",
        "ix_jobs_prime_id",
    ]
    assert sorted(
        (diff[0], diff[2], diff[3].name) for diff in diffs if diff[0] not in {"add_table", "add_index"}
    ) == [
        ("add_column", "jobs", "lease_lapse_ends_at"),
        ("add_column", "jobs", "lease_seconds"),
        ("add_column", "jobs", "level_windows"),
        ("add_column", "jobs", "max_running_per_user"),
        ("add_column", "samples", "message_parts_limit"),
        ("add_column", "samples", "message_parts_sent"),
        ("add_column", "samples", "message_parts_total"),
    ]
    with pytest.raises(RuntimeError, match="1 curate job"):
        await downgrade_async(url, "0004")
    assert await current_revision_async(url) == "0005"  # nothing undone
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(sa.text("DELETE FROM jobs WHERE kind = 'curate'"))
    finally:
        await engine.dispose()
    await downgrade_async(url, "0004")
    with pytest.raises(sa.exc.IntegrityError):
        await insert(id=3, kind="curate")
    assert await _read(url, sa.select(JOBS_0001.c.id, JOBS_0001.c.kind)) == [(2, "generate")]


async def test_0006_adds_level_windows_that_older_rows_leave_empty(empty_db_url: str) -> None:
    url = empty_db_url
    job = {"id": 1, "channel_id": 1, "user_id": 2, "model": "5b", "params": {}, "kind": "generate"}
    job |= {"status": "queued", "priority": 0, "attempts": 0, "max_attempts": 1, "progress": 0.0}
    job |= {"created_at": T0, "updated_at": T0}
    await upgrade_async(url, "0005")
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(JOBS_0001.insert(), [job])
    finally:
        await engine.dispose()
    await upgrade_async(url, "0006")
    assert "level_windows" in (await _columns(url))["jobs"]
    await upgrade_to_head_async(url)  # the store reads the current schema
    engine = create_engine(url)
    try:
        assert (await JobStore(engine).get_job(1)).level_windows == ()
    finally:
        await engine.dispose()
    await downgrade_async(url, "0005")
    assert "level_windows" not in (await _columns(url))["jobs"]
    assert await _read(url, sa.select(JOBS_0001.c.id, JOBS_0001.c.status)) == [(1, "queued")]


async def test_0007_adds_the_running_limit_that_older_jobs_leave_empty(empty_db_url: str) -> None:
    url = empty_db_url
    job = {"channel_id": 1, "user_id": 2, "model": "5b", "params": {}, "kind": "generate"}
    job |= {"status": "queued", "priority": 0, "attempts": 0, "max_attempts": 1, "progress": 0.0}
    job |= {"created_at": T0, "updated_at": T0}
    await upgrade_async(url, "0006")
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(JOBS_0001.insert(), [{**job, "id": 1}, {**job, "id": 2}])
    finally:
        await engine.dispose()
    await upgrade_async(url, "0007")
    assert "max_running_per_user" in (await _columns(url))["jobs"]
    await upgrade_to_head_async(url)  # the store of today, on the rows 0007 left
    engine = create_engine(url)
    try:  # jobs queued before it have no limit: both of the user's run at once, as they did
        store = JobStore(engine)
        taken = [await store.claim(worker, ["5b"], lease_seconds=60) for worker in ("a", "b")]
        assert [job.id for job in taken if job is not None] == [1, 2]
    finally:
        await engine.dispose()
    await downgrade_async(url, "0006")
    assert "max_running_per_user" not in (await _columns(url))["jobs"]


async def test_0008_adds_sample_message_parts_that_older_samples_leave_empty(empty_db_url: str) -> None:
    url = empty_db_url
    job = {"id": 1, "channel_id": 1, "user_id": 2, "model": "5b", "params": {}, "kind": "generate"}
    job |= {"status": "succeeded", "priority": 0, "attempts": 0, "max_attempts": 1, "progress": 1.0}
    job |= {"created_at": T0, "updated_at": T0, "finished_at": FINISHED_AT}
    sample = {"job_id": 1, "levels_mask": 4, "model": "5b", "audio_format": "ogg"}
    sample |= {"seed": 7, "duration_seconds": 1.0, "audio": b"OggS", "created_at": T0}
    message = sa.table("samples", sa.column("id"), sa.column("message_id", sa.BigInteger()))
    await upgrade_async(url, "0007")
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(JOBS_0001.insert(), [job])
            await connection.execute(
                SAMPLES_0001.insert(), [{**sample, "id": 1, "index": 0}, {**sample, "id": 2, "index": 1}]
            )
            await connection.execute(message.update().where(message.c.id == 1).values(message_id=99))
    finally:
        await engine.dispose()
    await upgrade_async(url, "0008")
    assert {"message_parts_sent", "message_parts_total", "message_parts_limit"} <= (await _columns(url))[
        "samples"
    ]
    await upgrade_to_head_async(url)
    engine = create_engine(url)
    try:  # a sample posted before it went out whole; one not posted is still to post, whole
        infos = await JobStore(engine).samples_for_job(1)
        assert [(i.message_id, i.message_parts_sent, i.posted) for i in infos] == [
            (99, None, True),
            (None, None, False),
        ]
    finally:
        await engine.dispose()
    await downgrade_async(url, "0007")
    assert (
        not {"message_parts_sent", "message_parts_total", "message_parts_limit"}
        & (await _columns(url))["samples"]
    )
    assert await _read(url, sa.select(message).order_by(message.c.id)) == [(1, 99), (2, None)]


async def test_0009_records_the_servers_older_bots_left_and_takes_the_table_away_again(
    empty_db_url: str,
) -> None:
    """A bot before 0009 cancelled the jobs of a server it was removed from with the reason below; a job
    queued in that server after means a bot serves it again."""
    url = empty_db_url
    reason = "the bot was removed from this server"
    job = {"channel_id": 1, "user_id": 2, "model": "5b", "params": {}, "kind": "generate"}
    job |= {"priority": 0, "attempts": 0, "max_attempts": 1, "progress": 0.0, "updated_at": T0}
    later = T0 + timedelta(hours=1)
    guild_job = sa.table("jobs", sa.column("id"), sa.column("guild_id"), sa.column("error"))
    await upgrade_async(url, "0008")
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            rows = [
                {
                    **job,
                    "id": 1,
                    "status": "cancelled",
                    "created_at": T0,
                    "finished_at": T0,
                },  # server 10 left
                {**job, "id": 2, "status": "failed", "created_at": T0, "finished_at": T0},  # 10, before
                {**job, "id": 3, "status": "cancelled", "created_at": T0, "finished_at": T0},  # 20 left...
                {**job, "id": 4, "status": "queued", "created_at": later, "finished_at": None},  # ...and back
                {
                    **job,
                    "id": 5,
                    "status": "cancelled",
                    "created_at": T0,
                    "finished_at": T0,
                },  # 30: by its user
            ]
            await connection.execute(JOBS_0001.insert(), rows)
            for job_id, guild_id, error in [(1, 10, reason), (2, 10, "CUDA"), (3, 20, reason), (4, 20, None)]:
                await connection.execute(
                    guild_job.update().where(guild_job.c.id == job_id).values(guild_id=guild_id, error=error)
                )
            await connection.execute(guild_job.update().where(guild_job.c.id == 5).values(guild_id=30))
    finally:
        await engine.dispose()
    await upgrade_async(url, "0009")
    await upgrade_to_head_async(url)  # the store of today, on the rows 0009 left
    engine = create_engine(url)
    try:
        store = JobStore(engine)
        with pytest.raises(JobNotRetryable, match=r"removed from its server \(10\)"):
            await store.retry_job(2)  # failed before the bot left: refused all the same
        assert (await store.retry_job(5)).status is JobStatus.QUEUED
    finally:
        await engine.dispose()
    left = sa.table("left_guilds", sa.column("guild_id"))
    assert await _read(url, sa.select(left.c.guild_id)) == [(10,)]
    await downgrade_async(url, "0008")
    assert "left_guilds" not in await _columns(url)


async def test_0011_indexes_jobs_by_parent_sample_and_prime_and_takes_them_away_again(
    empty_db_url: str,
) -> None:
    url = empty_db_url
    job = {"channel_id": 1, "user_id": 2, "model": "5b", "params": {}, "kind": "generate", "status": "queued"}
    job |= {
        "priority": 0,
        "attempts": 0,
        "max_attempts": 1,
        "progress": 0.0,
        "created_at": T0,
        "updated_at": T0,
    }
    await upgrade_async(url, "0010")
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(JOBS_0001.insert(), [{**job, "id": 1}])
    finally:
        await engine.dispose()

    async def job_indexes() -> set[str]:
        engine = create_engine(url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(
                    lambda sync: {i["name"] for i in inspect(sync).get_indexes("jobs")}
                )
        finally:
            await engine.dispose()

    await upgrade_async(url, "0011")
    assert {"ix_jobs_parent_sample_id", "ix_jobs_prime_id"} <= await job_indexes()
    assert await _read(url, sa.select(JOBS_0001.c.id)) == [(1,)]
    await downgrade_async(url, "0010")
    assert not {"ix_jobs_parent_sample_id", "ix_jobs_prime_id"} & await job_indexes()
    assert await _read(url, sa.select(JOBS_0001.c.id)) == [(1,)]


async def test_a_migration_gives_way_to_a_session_holding_a_table_and_says_which(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A psql left idle in a transaction that wrote a job: the migration waited for its lock forever,
    with no word, and every query on jobs queued behind it (the bot's and workers' timed out). It now
    gives way, tries again, and stops naming the session; nothing is changed, and it goes on once the
    session ends."""
    if not empty_db_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer: a migration waits for it as any writer does (its busy timeout)")
    monkeypatch.setattr(storage.migrate, "MIGRATION_LOCK_WAIT_SECONDS", 0.3)
    monkeypatch.setattr(storage.migrate, "MIGRATION_RETRY_PAUSE_SECONDS", 0.1)
    monkeypatch.setattr(storage.migrate, "MIGRATION_TRIES", 2)
    await upgrade_async(empty_db_url, "0010")
    holder = create_engine(empty_db_url)
    try:
        async with holder.connect() as session:
            await session.exec_driver_sql("SET application_name = 'psql'")
            pid = await session.scalar(sa.text("SELECT pg_backend_pid()"))
            await session.exec_driver_sql(
                "UPDATE jobs SET priority = 1 WHERE id = -1"
            )  # its transaction stays open
            with pytest.raises(MigrationBlocked) as blocked:
                await upgrade_to_head_async(empty_db_url)
            assert f"pid {pid} (psql, " in str(blocked.value) and "idle in transaction since " in str(
                blocked.value
            )
            assert str(blocked.value).startswith(
                "the schema change waited 2 times for locks other sessions hold on jukebot's tables (0.3 s "
                "each) and gave way each time, so nothing was changed; holding them: pid "
            )
            (retried,) = [
                r.getMessage() for r in caplog.records if "gave way and tries again" in r.getMessage()
            ]
            assert f"pid {pid} (psql" in retried
            assert await current_revision_async(empty_db_url) == "0010"
            monkeypatch.setenv("DATABASE_URL", empty_db_url)
            said = database_problem(blocked.value, load_settings())
            assert (
                said is not None
                and said.startswith("The database at postgresql")
                and said.endswith(
                    "End those sessions (a psql left in a transaction: COMMIT or ROLLBACK it, or "
                    "`SELECT pg_terminate_backend(PID)`), then start again."
                )
            )
            await session.rollback()
        await upgrade_to_head_async(empty_db_url)
    finally:
        await holder.dispose()
    assert await current_revision_async(empty_db_url) == head_revision()


async def test_a_revision_table_with_two_rows_is_refused_in_a_sentence(empty_db_url: str) -> None:
    """Another Alembic program's table beside ours: `db check`, `db upgrade` and `doctor` ended in
    Alembic's traceback ("more than one head present")."""
    await upgrade_to_head_async(empty_db_url)
    engine = create_engine(empty_db_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                sa.text("INSERT INTO alembic_version (version_num) VALUES ('ae1027a6acf')")
            )
    finally:
        await engine.dispose()
    for call in (upgrade_to_head_async, current_revision_async):
        with pytest.raises(UnknownSchemaRevision) as refused:
            await call(empty_db_url)
        assert refused.value.revision == f"{head_revision()} and ae1027a6acf" and not refused.value.newer


async def test_a_sqlite_file_whose_disk_could_fill_while_migrating_is_not_migrated(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk mid-migration was reported as Alembic's cleanup failing ("no such table:
    _alembic_tmp_jobs"), the real cause lost. A migration that may need twice the file's size is refused
    before it starts when the disk has less free (the measure of free space is the OS's: set here)."""
    if not empty_db_url.startswith("sqlite"):
        pytest.skip("Postgres keeps its files on the server's disks, and reports a full one itself")
    await upgrade_async(empty_db_url, "0010")
    path = make_url(empty_db_url).database
    assert path is not None
    size = await asyncio.to_thread(os.path.getsize, path)
    monkeypatch.setattr(storage.migrate, "free_bytes", lambda folder: 2 * size - 1)
    with pytest.raises(NoRoomToMigrate) as refused:
        await upgrade_to_head_async(empty_db_url)
    # The amount needed beside the amount free: "twice its size (1 MiB)" and "2 MiB free" read as a mistake.
    needed, free = f"{2 * size / 2**20:.1f} MiB", f"{(2 * size - 1) / 2**20:.1f} MiB"
    assert str(refused.value).startswith(f"migrating {path} may take up to twice its size ({needed}) more")
    assert str(refused.value).endswith(f"that disk has {free} free")
    monkeypatch.setenv("DATABASE_URL", empty_db_url)
    said = database_problem(refused.value, load_settings())
    assert said is not None and said.endswith("then start again; nothing was changed.")
    assert await current_revision_async(empty_db_url) == "0010"
    monkeypatch.setattr(storage.migrate, "free_bytes", lambda folder: 2 * size)
    await upgrade_to_head_async(empty_db_url)
    assert await current_revision_async(empty_db_url) == head_revision()


LEASE = timedelta(seconds=60)


async def test_0012_keeps_the_lease_length_and_recovers_older_lapsed_leases_at_once(
    empty_db_url: str,
) -> None:
    """A lease taken before 0012 has no length to wait for after a recovery pass saw it run out: it is
    recovered at once, as then; one taken after waits a lease after that pass."""
    url = empty_db_url
    job = {"channel_id": 1, "user_id": 2, "model": "5b", "params": {}, "kind": "generate", "progress": 0.0}
    job |= {"status": "running", "priority": 0, "attempts": 0, "max_attempts": 3}
    job |= {"created_at": T0, "updated_at": T0}
    await upgrade_async(url, "0011")
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                JOBS_0001.insert(), [{**job, "id": 1}, {**job, "id": 2, "status": "queued"}]
            )
            lease = sa.table(
                "jobs",
                sa.column("id"),
                sa.column("lease_owner"),
                sa.column("lease_expires_at", UTCDateTime()),
            )
            await connection.execute(
                lease.update().where(lease.c.id == 1).values(lease_owner="old", lease_expires_at=T0 + LEASE)
            )
    finally:
        await engine.dispose()
    await upgrade_async(url, "0012")
    assert {"lease_seconds", "lease_lapse_ends_at"} <= set((await _columns(url))["jobs"])
    engine = create_engine(url)
    try:
        store = JobStore(engine, clock=FakeClock(T0 + timedelta(seconds=61)))
        assert await store.requeue_expired() == [(1, JobStatus.QUEUED)]
        taken = await store.claim("new", ["5b"], lease_seconds=60)
        assert taken is not None and taken.id == 1
        assert await store.requeue_expired(now=T0 + timedelta(seconds=200)) == []  # seen: a lease to renew it
        assert await store.requeue_expired(now=T0 + timedelta(seconds=261)) == [(1, JobStatus.QUEUED)]
    finally:
        await engine.dispose()
    await downgrade_async(url, "0011")
    assert not {"lease_seconds", "lease_lapse_ends_at"} & set((await _columns(url))["jobs"])
