"""Migrations build exactly the models' schema on both databases, and undo it."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import inspect
from sqlalchemy.engine import make_url

from jukebot.cli import main
from storage.engine import create_engine
from storage.migrate import (
    current_revision_async,
    downgrade_async,
    schema_diff,
    schema_diff_async,
    upgrade_to_head_async,
)
from storage.models import Base

TABLES = {"jobs", "samples", "votes", "primes", "guild_settings"}


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
    assert "latest schema" in result.output
    assert schema_diff(empty_db_url) == []
    if url.get_backend_name() == "sqlite":
        assert url.database is not None
        with sqlite3.connect(url.database) as connection:
            names = {
                row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        assert TABLES <= names


def test_migrations_ship_inside_the_package() -> None:
    import storage

    versions = Path(storage.__file__).parent / "migrations" / "versions"
    assert (versions.parent / "env.py").is_file()
    assert any(path.name.startswith("0001_") for path in versions.glob("*.py"))
    assert {table.name for table in Base.metadata.sorted_tables} == TABLES


def test_storage_imports_nothing_else_of_ours() -> None:
    code = (
        "import sys, storage, storage.migrate, storage.store\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'bot', 'sampler', 'jukebot'}))"
    )
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"
