"""A database jukebot reaches but may not use as it needs: a Postgres user without rights on it, a
SQLite file another process holds locked, a SQLite file in a folder this user may not write. Each was
"cannot reach the database" or the driver's bare words; each is now one sentence with its fix."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy.engine import make_url

from jukebot.cli import main
from jukebot.commands import _grant_tables
from storage.engine import create_engine
from storage.migrate import upgrade_async
from tests.conftest import (
    POSTGRES_URL,
    TEST_DATABASE_PREFIX,
    _create_postgres_database,
    _drop_postgres_database,
    _in_thread,
    _maintenance_engine,
    _postgres_url,
)
from tests.unprivileged import SetMode, set_mode, without_read_privileges

__all__ = ["set_mode"]  # a fixture

pytestmark = pytest.mark.usefixtures("clean_env")


def invoke(*args: str, **env: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.output


def advised_statements(output: str) -> list[str]:
    """The SQL a message tells the operator to run (between backticks), one statement each."""
    return [
        statement.strip()
        for quoted in re.findall(r"`([^`]+)`", " ".join(output.split()))
        if quoted.split()[0] in ("GRANT", "ALTER")
        for statement in quoted.split(";")
        if statement.strip()
    ]


async def _as_superuser(statement: str) -> None:
    engine = _maintenance_engine()
    try:
        async with engine.connect() as connection:
            await connection.exec_driver_sql(statement)
    finally:
        await engine.dispose()


@pytest.fixture
def role_without_rights() -> Iterator[str]:
    """A role whose name has capitals, as operators name them: SQL folds it to lower case unless quoted,
    so advice that spelled it bare changed another role (or none)."""
    name = f"{TEST_DATABASE_PREFIX}Jukebot_{uuid.uuid4().hex[:12]}"
    _in_thread(lambda: asyncio.run(_as_superuser(f'CREATE ROLE "{name}" LOGIN')))
    try:
        yield name
    finally:
        _in_thread(lambda: asyncio.run(_as_superuser(f'DROP ROLE IF EXISTS "{name}"')))


@pytest.mark.postgres
def test_a_postgres_user_without_rights_on_the_tables_is_told_the_grant_that_works(
    postgres_database: str, role_without_rights: str
) -> None:
    """The tables are there, another user's: the advice was to make the user the database's owner, which
    grants nothing on them (the same error came back). Now it is the GRANT, which works as written."""
    server = make_url(POSTGRES_URL)
    url = f"postgresql://{role_without_rights}@{server.host}:{server.port}/{postgres_database}"
    outputs = []
    for command in (("jobs", "list"), ("db", "upgrade"), ("db", "check")):
        code, output = invoke(*command, DATABASE_URL=url)
        assert code == 1, output
        assert f"Postgres user '{role_without_rights}' may not use jukebot's tables at" in output, output
        assert "cannot reach" not in output.lower() and "OWNER" not in output, output
        outputs.append(output)
    advice = advised_statements(outputs[0])
    role = f'"{role_without_rights}"'
    assert advice == [
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}",
    ], outputs[0]
    try:
        for statement in advice:  # as the tables' owner runs it
            _in_thread(lambda statement=statement: asyncio.run(_in_database(postgres_database, statement)))
        for command in (("jobs", "list"), ("db", "check"), ("db", "upgrade")):
            code, output = invoke(*command, DATABASE_URL=url)
            assert code == 0, output
    finally:  # the role goes after the test: its rights first
        _in_thread(lambda: asyncio.run(_in_database(postgres_database, f"DROP OWNED BY {role}")))


@pytest.mark.postgres
def test_a_postgres_user_that_may_not_create_tables_is_told_to_own_the_database(
    postgres_database: str, role_without_rights: str
) -> None:
    """An empty database (Postgres 15 and later let only its owner create tables in `public`)."""
    name = f"{TEST_DATABASE_PREFIX}{uuid.uuid4().hex[:16]}"
    _in_thread(lambda: asyncio.run(_create_postgres_database(name)))
    try:
        server = make_url(POSTGRES_URL)
        url = f"postgresql://{role_without_rights}@{server.host}:{server.port}/{name}"
        code, output = invoke("db", "upgrade", DATABASE_URL=url)
        assert code == 1, output
        assert f"Postgres user '{role_without_rights}' may not use the database at" in output, output
        (advice,) = advised_statements(output)
        assert advice == f'ALTER DATABASE {name} OWNER TO "{role_without_rights}"', output
        _in_thread(lambda: asyncio.run(_as_superuser(advice)))  # as written
        code, output = invoke("db", "upgrade", DATABASE_URL=url)
        assert code == 0, output
    finally:
        _in_thread(lambda: asyncio.run(_drop_postgres_database(name)))


@pytest.mark.postgres
@pytest.mark.parametrize(
    "revision",
    [
        "0010",  # the next migration's first statement alters a table: "must be owner of table jobs"
        "0008",  # it creates one: "permission denied for schema public" (Postgres 15 and later)
    ],
)
def test_a_granted_postgres_user_is_told_that_a_schema_upgrade_needs_the_tables_owner(
    role_without_rights: str, revision: str
) -> None:
    """The user given the GRANT above works until a newer jukebot brings a migration, which only the
    tables' owner may run; the advice was to make the user the database's owner, which gives no rights
    on tables another user owns (the same error came back, or the next one; found by reviews). It now
    says to upgrade once as the tables' owner and grant the new tables, which works as written."""
    name = f"{TEST_DATABASE_PREFIX}{uuid.uuid4().hex[:16]}"
    _in_thread(lambda: asyncio.run(_create_postgres_database(name)))
    try:
        owner_url = _postgres_url(name)
        _in_thread(lambda: asyncio.run(upgrade_async(owner_url, revision)))  # an older jukebot's schema
        role = f'"{role_without_rights}"'
        for statement in _grant_tables(role_without_rights).split("`")[1].split(";"):
            _in_thread(lambda statement=statement: asyncio.run(_in_database(name, statement)))
        server = make_url(POSTGRES_URL)
        url = f"postgresql://{role_without_rights}@{server.host}:{server.port}/{name}"
        for command in (("db", "upgrade"), ("worker",)):  # (`worker` upgrades first, as `run` does)
            code, output = invoke(*command, DATABASE_URL=url)
            assert code == 1, output
            said = " ".join(output.split())
            assert f"Postgres user '{role_without_rights}' does not own jukebot's tables at" in said, output
            assert "OWNER TO" not in said, output
            assert "run `jukebot db upgrade` once with DATABASE_URL set to the user that owns them" in said
        advice = advised_statements(output)
        assert advice == [
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
            f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}",
        ], output
        assert invoke("db", "upgrade", DATABASE_URL=owner_url)[0] == 0  # as the advice says, then…
        for statement in advice:  # …as that owner
            _in_thread(lambda statement=statement: asyncio.run(_in_database(name, statement)))
        for command in (("db", "check"), ("db", "upgrade"), ("jobs", "list")):
            code, output = invoke(*command, DATABASE_URL=url)
            assert code == 0, output
        _in_thread(lambda: asyncio.run(_in_database(name, f"DROP OWNED BY {role}")))
    finally:
        _in_thread(lambda: asyncio.run(_drop_postgres_database(name)))


async def _in_database(database: str, statement: str) -> None:
    server = make_url(POSTGRES_URL)
    engine = create_engine(f"postgresql+asyncpg://{server.username}@{server.host}:{server.port}/{database}")
    try:
        async with engine.begin() as connection:
            await connection.exec_driver_sql(statement)
    finally:
        await engine.dispose()


def test_a_sqlite_file_another_process_holds_locked_is_named_as_a_time_out(tmp_path: Path) -> None:
    path = tmp_path / "jukebot.sqlite3"
    url = f"sqlite:///{path}?timeout=0.2"
    assert invoke("db", "upgrade", DATABASE_URL=url)[0] == 0
    holder = sqlite3.connect(path, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process's write transaction, left open
        code, output = invoke("db", "upgrade", DATABASE_URL=url)
    finally:
        holder.close()
    assert code == 1, output
    assert "timed out: another process held its write lock past SQLite's 0.2 s" in output, output
    assert invoke("db", "upgrade", DATABASE_URL=url)[0] == 0  # once it lets go


@without_read_privileges
def test_a_sqlite_file_in_a_folder_this_user_may_not_write_names_the_folder(
    tmp_path: Path, set_mode: SetMode
) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "jukebot.sqlite3"
    url = f"sqlite:///{path}"
    assert invoke("db", "upgrade", DATABASE_URL=url)[0] == 0
    set_mode(folder, 0o555)
    code, output = invoke("jobs", "list", DATABASE_URL=url)
    assert code == 1, output
    assert f"{path} cannot be written: this user may not write the file or its folder {folder}" in output, (
        output
    )


@pytest.mark.postgres
def test_a_postgres_user_that_may_only_read_is_refused_at_start_not_on_every_poll(
    postgres_database: str, role_without_rights: str
) -> None:
    """A database already at the latest schema migrates nothing, so nothing tried the user's rights:
    `db upgrade` said "already at the latest schema", and a worker logged a traceback on every poll."""
    server = make_url(POSTGRES_URL)
    owner = f"postgresql://{server.username}@{server.host}:{server.port}/{postgres_database}"
    assert invoke("db", "upgrade", DATABASE_URL=owner)[0] == 0
    database = f'"{postgres_database}"'

    async def grant(statement: str) -> None:
        engine = create_engine(owner.replace("postgresql://", "postgresql+asyncpg://", 1))
        try:
            async with engine.begin() as connection:
                await connection.exec_driver_sql(statement)
        finally:
            await engine.dispose()

    role = f'"{role_without_rights}"'
    try:
        _in_thread(lambda: asyncio.run(grant(f"GRANT CONNECT ON DATABASE {database} TO {role}")))
        _in_thread(lambda: asyncio.run(grant(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")))
        _refused_until_it_may_write(role_without_rights, postgres_database, grant)
    finally:  # the role goes before the database: its rights there first
        _in_thread(lambda: asyncio.run(grant(f"DROP OWNED BY {role}")))


def _refused_until_it_may_write(role_without_rights: str, postgres_database: str, grant: Any) -> None:
    server = make_url(POSTGRES_URL)
    role = f'"{role_without_rights}"'
    url = f"postgresql://{role_without_rights}@{server.host}:{server.port}/{postgres_database}"
    code, output = invoke("db", "upgrade", DATABASE_URL=url)
    assert code == 1, output
    assert f"Postgres user '{role_without_rights}' may not write jukebot's tables at" in output, output
    assert (
        "(it lacks guild_settings: INSERT, UPDATE; jobs: INSERT, UPDATE; public.jobs_id_seq: USAGE;" in output
    )
    advice = advised_statements(output)
    assert advice == [
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}",
    ], output
    for statement in advice:  # run as the message writes it
        _in_thread(lambda statement=statement: asyncio.run(grant(statement)))
    code, output = invoke(
        "db", "upgrade", DATABASE_URL=url
    )  # a user with every right it needs, not the owner
    assert code == 0 and "already at the latest schema" in output, output


@pytest.mark.postgres
def test_a_postgres_user_whose_sessions_are_read_only_is_told_so_not_to_grant_rights(
    postgres_database: str, role_without_rights: str
) -> None:
    """A role with `default_transaction_read_only` (or a standby): its first migration stopped on the
    driver's "cannot execute CREATE TABLE in a read-only transaction", and at the latest schema it was
    told to GRANT rights it already had, which changes nothing."""
    server = make_url(POSTGRES_URL)
    name = f"{TEST_DATABASE_PREFIX}{uuid.uuid4().hex[:16]}"  # its own: the role will own it
    role = f'"{role_without_rights}"'

    def run(statement: str) -> None:
        _in_thread(lambda: asyncio.run(_in_database(name, statement)))

    url = f"postgresql://{role_without_rights}@{server.host}:{server.port}/{name}"
    told = (
        f"The database at postgresql+asyncpg://{role_without_rights}@{server.host}:{server.port}/{name} "
        f"takes no writes from Postgres user '{role_without_rights}': its sessions are read-only"
    )
    _in_thread(lambda: asyncio.run(_create_postgres_database(name)))
    try:
        run(f'ALTER DATABASE "{name}" OWNER TO {role}')
        run(f"ALTER ROLE {role} SET default_transaction_read_only = on")
        code, output = invoke("db", "upgrade", DATABASE_URL=url)  # an empty database: the first migration
        assert code == 1 and told in output, output
        advice = advised_statements(output)
        assert advice == [f"ALTER ROLE {role} SET default_transaction_read_only = off"], output

        run(advice[0])  # as the message writes it
        assert invoke("db", "upgrade", DATABASE_URL=url)[0] == 0
        run(f"ALTER ROLE {role} SET default_transaction_read_only = on")
        for command in (("db", "upgrade"), ("worker",)):  # at the latest schema: nothing migrates
            code, output = invoke(*command, DATABASE_URL=url, JUKEBOT_GPUS="cpu")
            assert code == 1 and told in output and "GRANT" not in output, output
    finally:  # the database, then the role (its fixture): nothing of the role is left
        _in_thread(lambda: asyncio.run(_drop_postgres_database(name)))
