"""`jukebot db check`, the Docker health check: exit 0 only for a reachable database at the latest schema."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy.engine import make_url

from jukebot.cli import main
from storage.migrate import head_revision
from tests.conftest import POSTGRES_URL
from tests.unprivileged import without_read_privileges


def _check(monkeypatch: pytest.MonkeyPatch, url: str) -> Result:
    monkeypatch.setenv("DATABASE_URL", url)
    return CliRunner().invoke(main, ["db", "check"])


def test_a_migrated_database_is_healthy(monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:
    result = _check(monkeypatch, db_url)
    assert result.exit_code == 0, result.output
    assert result.output.endswith(f"answers and is at the latest schema ({head_revision()})\n")


def test_an_empty_database_says_to_upgrade(monkeypatch: pytest.MonkeyPatch, empty_db_url: str) -> None:
    result = _check(monkeypatch, empty_db_url)
    assert result.exit_code == 1
    assert (
        f"is at schema none (no jukebot tables yet), not {head_revision()}: run `jukebot db upgrade`"
        in result.output
    )


def test_an_unreachable_database_is_one_sentence_without_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = _check(monkeypatch, f"postgresql://jukebot:s3cret@127.0.0.1:{port}/jukebot")
    assert result.exit_code == 1
    assert result.output.startswith(
        f"Error: Cannot reach the database at postgresql+asyncpg://jukebot:***@127.0.0.1:{port}/jukebot ("
    )
    assert result.output.endswith("): start it or fix DATABASE_URL.\n")  # what to do, as `db upgrade` says
    assert "s3cret" not in result.output and result.output.count("\n") == 1


@pytest.mark.postgres
def test_a_missing_database_named_with_its_host_in_the_query_says_which_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The README's query-string form; the message said "does not exist on None"."""
    postgres = make_url(POSTGRES_URL)
    url = f"postgresql://{postgres.username}@/jukebot_no_such_db?host={postgres.host}&port={postgres.port}"
    result = _check(monkeypatch, url)
    assert result.exit_code == 1
    assert result.output.startswith(
        f"Error: Database 'jukebot_no_such_db' does not exist on {postgres.host}: create it"
    ), result.output


@without_read_privileges
def test_a_sqlite_file_in_a_folder_this_user_may_not_write_is_one_sentence(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SQLite's own "unable to open database file" named no folder, and aiosqlite's thread sometimes
    printed a traceback after it."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    database = folder / "jukebot.sqlite3"
    folder.chmod(0o555)
    try:
        monkeypatch.setenv("DATABASE_URL", f"sqlite:///{database}")
        results = [
            CliRunner().invoke(main, [command, "upgrade" if command == "db" else "list"])
            for command in ("db", "jobs")
        ]
    finally:
        folder.chmod(0o755)
    for result in results:
        assert result.exit_code == 1
        assert result.output == (
            f"Error: DATABASE_URL's SQLite file {database} cannot be created: this user may not write in "
            f"{folder}. Change that folder's permissions, or point DATABASE_URL at a folder this user may "
            "write in.\n"
        )
    assert not database.exists()


def test_run_and_worker_log_a_schema_they_changed_for_the_other_machines(
    monkeypatch: pytest.MonkeyPatch, empty_db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker that migrated a shared database obliged every other machine to upgrade, without a word."""
    import asyncio
    import logging

    from jukebot.commands.serve import migrate_and_say
    from jukebot.settings import load_settings
    from storage.migrate import downgrade_async

    monkeypatch.setenv("DATABASE_URL", empty_db_url)
    caplog.set_level(logging.INFO)
    migrate_and_say(load_settings())  # a new database: nothing shared was changed
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    asyncio.run(downgrade_async(empty_db_url, "-1"))  # as an older jukebot left it
    migrate_and_say(load_settings())
    (said,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert said.endswith(
        f"was at schema {int(head_revision() or 0) - 1:04d} and is now at {head_revision()}: every machine "
        "sharing it must run this jukebot version"
    )


@without_read_privileges
def test_a_sqlite_file_behind_a_folder_this_user_may_not_enter_is_one_sentence(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Path.is_dir raised PermissionError: every command that reads the database ended in a traceback
    (jukebot makes its own folders 0700, so another account meets this)."""
    closed = tmp_path / "closed"
    database = closed / "data" / "jukebot.sqlite3"
    database.parent.mkdir(parents=True)
    closed.chmod(0o600)  # readable, not searchable
    try:
        monkeypatch.setenv("DATABASE_URL", f"sqlite:///{database}")
        results = [CliRunner().invoke(main, command) for command in (["db", "check"], ["jobs", "list"])]
    finally:
        closed.chmod(0o755)
    for result in results:
        assert result.exit_code == 1, result.output
        assert result.output == (
            f"Error: DATABASE_URL's SQLite file {database} cannot be reached: this user may not enter the "
            f"folder {closed}. Change that folder's permissions, or point DATABASE_URL at a folder this "
            "user may write in.\n"
        )
