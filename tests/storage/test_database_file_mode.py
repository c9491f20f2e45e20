"""The SQLite database holds users' clips, audio and lyrics: what jukebot creates for it is private
(folders 0700, the file 0600, its -wal and -shm after it), whatever the umask lets others read. What is
there already keeps the mode it has: an operator may have set it deliberately."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from jukebot.cli import main
from storage.engine import create_engine

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX modes")


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    """The usual umask: new files 0644 and folders 0755 unless created otherwise."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def write_while_open(path: Path) -> dict[str, int]:
    """Write a row through jukebot's engine and, while it is still open, the modes of the database's
    files (the -wal and -shm exist only then)."""

    async def run() -> dict[str, int]:
        engine = create_engine(f"sqlite+aiosqlite:///{path}")
        try:
            async with engine.begin() as connection:
                await connection.exec_driver_sql("CREATE TABLE t (x)")
                await connection.exec_driver_sql("INSERT INTO t VALUES (1)")
            async with engine.connect() as connection:
                await connection.exec_driver_sql("SELECT x FROM t")
                return {
                    file.name: mode(file) for file in path.parent.iterdir() if file.name.startswith(path.name)
                }
        finally:
            await engine.dispose()

    return asyncio.run(run())


def test_a_new_database_and_the_folders_made_for_it_are_private(tmp_path: Path) -> None:
    path = tmp_path / "share" / "jukebot" / "jukebot.sqlite3"
    there = mode(tmp_path)

    modes = write_while_open(path)

    assert modes == {
        "jukebot.sqlite3": 0o600,
        "jukebot.sqlite3-wal": 0o600,
        "jukebot.sqlite3-shm": 0o600,
    }
    assert (mode(tmp_path / "share"), mode(tmp_path / "share" / "jukebot")) == (0o700, 0o700)
    assert mode(tmp_path) == there  # there already: left as it was


def test_an_existing_folder_and_file_keep_their_modes(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o750)
    (shared / "old.sqlite3").touch()  # an empty file is an empty SQLite database
    (shared / "old.sqlite3").chmod(0o640)

    old = write_while_open(shared / "old.sqlite3")
    new = write_while_open(shared / "new.sqlite3")

    assert mode(shared) == 0o750
    assert old["old.sqlite3"] == 0o640
    assert new["new.sqlite3"] == 0o600


def test_the_default_database_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`jukebot db upgrade` with no DATABASE_URL: ~/.local/share/jukebot/jukebot.sqlite3."""
    for name in list(os.environ):
        if name.startswith("JUKEBOT_") or name in {"DISCORD_TOKEN", "DATABASE_URL", "XDG_DATA_HOME"}:
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(home)

    result = CliRunner().invoke(main, ["db", "upgrade"])

    assert result.exit_code == 0, result.output
    database = home / ".local" / "share" / "jukebot" / "jukebot.sqlite3"
    created = [home / ".local", home / ".local" / "share", database.parent]
    assert [oct(mode(folder)) for folder in created] == [oct(0o700)] * 3
    assert oct(mode(database)) == oct(0o600)
    assert mode(home) == 0o755
