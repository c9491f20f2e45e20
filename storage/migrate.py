"""Alembic, configured in code: upgrade, downgrade, and "is the database schema the models?".

The sync functions are for the command line (no event loop running); inside a running
loop use the `*_async` variants.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect
from sqlalchemy import text as sa_text
from sqlalchemy.engine import Connection

from storage.engine import READ_ONLY, create_engine
from storage.models import Base

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Key of the Postgres advisory lock that serialises schema changes (bot and worker start together
# and both migrate; without it both create alembic_version and one dies on a unique violation).
MIGRATION_LOCK_KEY = 0x6A756B65626F74  # "jukebot"
# Postgres: how long a schema change waits for a lock another session holds on a table (an operator's
# psql idle in a transaction). Every query on that table queues behind the waiting change, so it gives
# way after this (the bot's and workers' queries go on), pauses and tries again: MIGRATION_TRIES in all.
MIGRATION_LOCK_WAIT_SECONDS = 5.0
MIGRATION_RETRY_PAUSE_SECONDS = 5.0
MIGRATION_TRIES = 6
_PG_LOCK_NOT_AVAILABLE = "55P03"

log = logging.getLogger(__name__)


def why_schema_not_ours(revisions: Sequence[str]) -> str:
    """Why a bot or worker that started on its own schema stops once `revisions` replaced it."""
    return (
        f"the database's schema (revision {', '.join(revisions)}) is not one this jukebot knows: a newer "
        "jukebot migrated it (upgrade jukebot on this machine: machines sharing one database must run the "
        "same version), or another program wrote it"
    )


class UnknownSchemaRevision(Exception):
    """The database's schema is at a revision these migrations do not have: a newer jukebot (or
    another program) migrated it. Upgrading or checking it stops before changing anything."""

    def __init__(self, revision: str, head: str | None) -> None:
        super().__init__(f"the database's schema revision {revision} is not one of ours (latest {head})")
        self.revision = revision
        self.head = head

    @property
    def newer(self) -> bool:
        """Whether the revision looks like one of ours from a later release (ours are numbered)."""
        return bool(
            self.head
            and self.revision.isdigit()
            and self.head.isdigit()
            and int(self.revision) > int(self.head)
        )


class ForeignTables(Exception):
    """The database has no jukebot schema but holds tables with the names of jukebot's: another
    program's database (or one whose first migration did not finish). Nothing is changed in it."""

    def __init__(self, tables: list[str]) -> None:
        super().__init__(
            f"the database holds tables named like jukebot's ({', '.join(tables)}) but no schema"
        )
        self.tables = tables


class MigrationBlocked(Exception):
    """The schema change gave way MIGRATION_TRIES times to locks other sessions hold on jukebot's tables;
    `holders` describes them. Nothing was changed."""

    def __init__(self, holders: list[str]) -> None:
        held = "; ".join(holders) or "sessions that have ended since"
        super().__init__(
            f"the schema change waited {MIGRATION_TRIES} times for locks other sessions hold on jukebot's "
            f"tables ({MIGRATION_LOCK_WAIT_SECONDS:g} s each) and gave way each time, so nothing was "
            f"changed; holding them: {held}"
        )
        self.holders = holders


def _revision_of(connection: Connection) -> str | None:
    """The database's schema revision; ForeignTables when it has none but holds tables named like ours
    (upgrading would stop on "table already exists", in the middle of the first migration)."""
    heads = MigrationContext.configure(connection).get_current_heads()
    if len(heads) > 1:  # not ours: jukebot's migrations have one line (Alembic raises a bare CommandError)
        raise UnknownSchemaRevision(" and ".join(sorted(heads)), head_revision())
    revision = heads[0] if heads else None
    if revision is None:
        taken = sorted(set(inspect(connection).get_table_names()) & set(Base.metadata.tables))
        if taken:
            raise ForeignTables(taken)
    return revision


@functools.cache
def known_revisions() -> frozenset[str]:
    """Every revision of these migrations (read from their files once per process)."""
    return frozenset(
        script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()
    )


def check_known_revision(revision: str | None) -> None:
    """Raise UnknownSchemaRevision when `revision` (a database's current one) is not in our migrations."""
    if revision is not None and revision not in known_revisions():
        raise UnknownSchemaRevision(revision, head_revision())


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic config for our migrations; `connection` is the one env.py runs them on."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


async def _run_alembic(url: str, action: str, revision: str) -> str | None:
    """Run `action` to `revision`; returns the revision the database was at (read under the lock, so a
    migrator that waited for another sees the other's work). On Postgres a change blocked by another
    session's lock gives way and tries again (`MIGRATION_LOCK_WAIT_SECONDS`), then MigrationBlocked."""
    engine = create_engine(url, sqlite_foreign_keys=False, bounded_statements=False)
    try:
        tries = 0
        while True:
            tries += 1
            try:
                return await _run_alembic_once(engine, action, revision)
            except Exception as exc:
                if not _lock_not_available(exc):
                    raise
            holders = await _lock_holders(engine)
            if tries >= MIGRATION_TRIES:
                raise MigrationBlocked(holders) from None
            log.warning(
                "the schema change waited %g s for locks on jukebot's tables held by %s; it gave way and "
                "tries again in %g s (%d of %d)",
                MIGRATION_LOCK_WAIT_SECONDS,
                "; ".join(holders) or "sessions that have ended since",
                MIGRATION_RETRY_PAUSE_SECONDS,
                tries + 1,
                MIGRATION_TRIES,
            )
            await asyncio.sleep(MIGRATION_RETRY_PAUSE_SECONDS)  # the queries queued behind it go on
    finally:
        await engine.dispose()


async def _run_alembic_once(engine: Any, action: str, revision: str) -> str | None:
    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Released at commit; a second migrator waits here (a migration may take minutes), then
            # finds the work done: however long, whatever lock_timeout the server or role sets.
            await connection.exec_driver_sql("SET LOCAL lock_timeout = 0")
            taken = await connection.scalar(
                sa_text(f"SELECT pg_try_advisory_xact_lock({MIGRATION_LOCK_KEY})")
            )
            if not taken:
                log.warning("waiting for another process's schema change of this database to end")
                await connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})")
            # Set after the advisory lock: that wait is for a migration, not for a stuck session.
            wait_ms = round(MIGRATION_LOCK_WAIT_SECONDS * 1000)
            await connection.exec_driver_sql(f"SET LOCAL lock_timeout = {wait_ms}")

        def run(sync_connection: Connection) -> str | None:
            before = _revision_of(sync_connection)
            # Alembic would fail on a revision it cannot find with a bare CommandError.
            check_known_revision(before)
            if action == "upgrade" and before != head_revision():
                _check_room_to_migrate(engine.url.database if engine.dialect.name == "sqlite" else None)
            getattr(command, action)(alembic_config(sync_connection), revision)
            return before

        return await connection.run_sync(run)


class NoRoomToMigrate(Exception):
    """A SQLite file's disk has less free than a migration may take; nothing was changed."""

    def __init__(self, path: str, size: int, free: int) -> None:
        # (the amount needed itself, to a tenth: "twice its size (1 MiB)" beside "2 MiB free" read as
        # a refusal in error)
        super().__init__(
            f"migrating {path} may take up to twice its size ({2 * size / 2**20:.1f} MiB) more on its disk "
            f"while it runs (a table copied whole, and the write-ahead log of the copy), and that disk has "
            f"{free / 2**20:.1f} MiB free"
        )
        self.path, self.size, self.free = path, size, free


def free_bytes(folder: str) -> int:
    """The bytes this user may still write on `folder`'s disk."""
    return shutil.disk_usage(folder).free


def _check_room_to_migrate(path: str | None) -> None:
    """NoRoomToMigrate when the SQLite file at `path` could fill its disk while migrating: SQLite rolls
    back, but Alembic's cleanup then fails on the table it was copying, and that error ("no such table:
    _alembic_tmp_jobs") is all that is said."""
    if not path or path == ":memory:":
        return
    try:
        size = os.path.getsize(path)
        free = free_bytes(os.path.dirname(os.path.abspath(path)))
    except OSError:  # not there yet: a new file, nothing to copy
        return
    if free < 2 * size:
        raise NoRoomToMigrate(path, size, free)


def _lock_not_available(error: BaseException) -> bool:
    from storage.errors import errors_within

    return any(getattr(e, "sqlstate", None) == _PG_LOCK_NOT_AVAILABLE for e in errors_within(error))


async def _lock_holders(engine: Any) -> list[str]:
    """The other sessions holding locks on jukebot's tables now, oldest transaction first: for a person
    to end (`pg_terminate_backend(pid)`)."""
    query = sa_text(
        "SELECT DISTINCT a.pid, a.application_name, a.state, a.xact_start, a.client_addr "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid JOIN pg_class c ON c.oid = l.relation "
        "WHERE l.granted AND a.pid <> pg_backend_pid() AND c.relname = ANY(:tables) "
        "ORDER BY a.xact_start LIMIT 5"
    )
    try:
        async with engine.connect() as connection:
            rows = (await connection.execute(query, {"tables": sorted(Base.metadata.tables)})).all()
    except Exception as exc:  # a description only: the failure to report is the lock's
        log.warning("could not list the sessions holding locks: %r", exc)
        return []
    described = []
    for pid, application, state, since, address in rows:
        who = ", ".join(part for part in (application, str(address or "") or "local", state) if part)
        when = f" since {since:%Y-%m-%d %H:%M:%S %Z}" if since is not None else ""
        described.append(f"pid {pid} ({who}{when})")
    return described


async def upgrade_to_head_async(url: str) -> str | None:
    return await _run_alembic(url, "upgrade", "head")


async def upgrade_async(url: str, revision: str) -> None:
    """Upgrade to one revision (e.g. "0001"); tests use it to check migrations keep data."""
    await _run_alembic(url, "upgrade", revision)


async def downgrade_async(url: str, revision: str = "base") -> None:
    await _run_alembic(url, "downgrade", revision)


def upgrade_to_head(url: str) -> str | None:
    """Apply every pending migration to the database at `url` (call with no event loop running);
    returns the revision it was at (None: no schema yet)."""
    return asyncio.run(upgrade_to_head_async(url))


def downgrade(url: str, revision: str = "base") -> None:
    asyncio.run(downgrade_async(url, revision))


# The rights jukebot uses on each of its tables: it deletes from these only (a vote taken back, a clip
# no job used, a worker forgotten, a server back).
_DELETED_FROM = frozenset({"votes", "primes", "workers", "left_guilds"})


class ReadOnlySessions(Exception):
    """The database user's Postgres sessions take no writes (`transaction_read_only`): the user's or
    the database's `default_transaction_read_only`, or a standby server. No GRANT changes that."""


async def missing_rights_async(url: str) -> list[str]:
    """What the database user lacks to run jukebot on a migrated Postgres database: rights on its
    tables (`jobs: INSERT, DELETE`) and on the sequences of their ids; `ReadOnlySessions` when its
    sessions may not write at all. Nothing on SQLite (the file's mode decides, and says so on use).

    A database at the latest schema migrates nothing, so nothing else tries the user's rights before
    its first job: without this, a worker would log a traceback on every poll."""
    engine = create_engine(url)
    try:
        if engine.dialect.name != "postgresql":
            return []
        tables = sorted(Base.metadata.tables.values(), key=lambda t: t.name)
        wanted = [
            (table.name, right)
            for table in tables
            for right in ("SELECT", "INSERT", "UPDATE", *(("DELETE",) if table.name in _DELETED_FROM else ()))
        ]
        with_ids = [t.name for t in tables if "id" in t.c and t.c.id.primary_key and t.c.id.autoincrement]
        # Three statements, not one per table and right: a remote database answers each in a round trip.
        async with engine.connect() as connection:
            if await connection.scalar(sa_text("SHOW transaction_read_only")) == "on":
                raise ReadOnlySessions()
            held = list(
                await connection.scalars(
                    sa_text(
                        "SELECT has_table_privilege(t, r) FROM unnest(CAST(:tables AS text[]), "
                        "CAST(:rights AS text[])) WITH ORDINALITY AS wanted(t, r, n) ORDER BY n"
                    ),
                    {"tables": [t for t, _ in wanted], "rights": [r for _, r in wanted]},
                )
            )
            # nextval needs USAGE or UPDATE (the function says whether either is held)
            sequences = (
                await connection.execute(
                    sa_text(
                        "SELECT t, s, s IS NULL OR has_sequence_privilege(s, 'USAGE, UPDATE') FROM (SELECT "
                        "t, pg_get_serial_sequence(t, 'id') AS s FROM unnest(CAST(:tables AS text[])) AS "
                        "wanted(t)) AS serial"
                    ),
                    {"tables": with_ids},
                )
            ).all()
        missing: list[str] = []
        unusable = {table: sequence for table, sequence, usable in sequences if not usable}
        for table in tables:
            lacking = [
                right for (name, right), ok in zip(wanted, held, strict=True) if name == table.name and not ok
            ]
            if lacking:
                missing.append(f"{table.name}: {', '.join(lacking)}")
            if table.name in unusable:
                missing.append(f"{unusable[table.name]}: USAGE")
        return missing
    finally:
        await engine.dispose()


def missing_rights(url: str) -> list[str]:
    return asyncio.run(missing_rights_async(url))


async def current_revision_async(url: str) -> str | None:
    """The database's schema revision (None: none yet). Only reads: on SQLite it reads the last commit
    and never waits for a writer (a worker holding the write lock)."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.execution_options(**{READ_ONLY: True})
            return await connection.run_sync(_revision_of)
    finally:
        await engine.dispose()


def current_revision(url: str) -> str | None:
    return asyncio.run(current_revision_async(url))


def head_revision() -> str | None:
    """The revision the migrations end at (what `upgrade_to_head` brings a database to)."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def schema_diff_async(url: str) -> list[Any]:
    """Differences between the database schema and `storage.models` ([] means `alembic check` is clean)."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.execution_options(**{READ_ONLY: True})  # reads only, as above

            def compare(sync_connection: Connection) -> list[Any]:
                context = MigrationContext.configure(sync_connection, opts={"compare_type": True})
                return list(compare_metadata(context, Base.metadata))

            return await connection.run_sync(compare)
    finally:
        await engine.dispose()


def schema_diff(url: str) -> list[Any]:
    return asyncio.run(schema_diff_async(url))
