"""A SQLite URL's query string: each parameter jukebot accepts does what SQLite documents, on the
file named, and the rest are refused with one sentence saying why (nothing written anywhere)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text

from jukebot.settings import load_settings
from storage.engine import SQLITE_BUSY_TIMEOUT_MS, create_engine
from storage.migrate import current_revision, head_revision
from tests.jukebot.test_settings_hardening import invoke, one_sentence


def busy_timeout_ms(url: str) -> int:
    async def read() -> int:
        engine = create_engine(url)
        try:
            async with engine.connect() as connection:
                return int(await connection.scalar(text("PRAGMA busy_timeout")))
        finally:
            await engine.dispose()

    return asyncio.run(read())


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("query", "refused", "why"),
    [
        # Was: migrated a new file named "e3.db?mode=ro", the named one left empty, exit 0.
        ("mode=ro&uri=true", "mode", "a read-only one, mode=ro, cannot work"),
        ("uri=true&cache=shared", "cache", "a shared cache would make a writer fail"),
        # Was: a raw SAWarning that mode is ignored, and the database written anyway.
        ("mode=ro", "mode", "a read-only one, mode=ro, cannot work"),
        ("mode=rw", "mode", "jukebot writes to its database"),
        ("cache=shared", "cache", "a shared cache"),
        ("uri=true", "uri", "opens the SQLite file by its path"),
        ("nolock=1", "nolock", "need SQLite's locks"),
        ("immutable=1", "immutable", "cannot be immutable"),
        ("check_same_thread=false", "check_same_thread", "changes nothing"),
    ],
)
def test_sqlite_uri_parameters_are_refused_and_nothing_is_written(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, query: str, refused: str, why: str
) -> None:
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "e3.db").touch()
    monkeypatch.setenv("JUKEBOT_DATABASE_URL", f"sqlite:///{folder / 'e3.db'}?{query}")
    for command in (["db", "upgrade"], ["db", "check"]):
        line = one_sentence(invoke(*command))
        assert line.startswith(
            f"Error: Bad value for JUKEBOT_DATABASE_URL: the SQLite URL's query string has {refused}, "
            "which jukebot cannot use: "
        ), line
        assert why in line and line.endswith("(a SQLite URL takes only timeout=SECONDS)."), line
    assert [(p.name, p.stat().st_size) for p in folder.iterdir()] == [("e3.db", 0)]


@pytest.mark.usefixtures("clean_env")
def test_a_file_uri_is_refused_not_opened_as_a_relative_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///file:{tmp_path / 'f.db'}")
    line = one_sentence(invoke("db", "upgrade"))
    assert "Bad value for DATABASE_URL: jukebot opens SQLite files by path, not by file: URI" in line
    assert list(tmp_path.glob("**/f.db")) == [] and not Path("file:").exists()


@pytest.mark.usefixtures("clean_env")
def test_the_timeout_is_the_busy_timeout_of_the_file_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "t.db"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{path}?timeout=2.5")
    result = invoke("db", "upgrade")
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.glob("t.db*")] == ["t.db"]
    settings = load_settings()
    assert settings.sqlite_path == path
    assert current_revision(settings.database_url) == head_revision()
    # Was: ignored (the driver's timeout overridden by ours, then PRAGMA busy_timeout = 60000).
    assert busy_timeout_ms(settings.database_url) == 2500
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{path}?timeout=0")
    assert busy_timeout_ms(load_settings().database_url) == 0
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{path}")
    assert busy_timeout_ms(load_settings().database_url) == SQLITE_BUSY_TIMEOUT_MS


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("timeout=abc", "timeout=abc in the SQLite URL is not a number of seconds from 0 to 86400"),
        ("timeout=-1", "timeout=-1 in the SQLite URL is not a number of seconds from 0 to 86400"),
        ("timeout=1e9", "timeout=1e9 in the SQLite URL is not a number of seconds from 0 to 86400"),
        ("timeout=1&timeout=2", "timeout appears 2 times in the SQLite URL; give it once"),
    ],
)
def test_a_bad_timeout_is_one_sentence(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, query: str, message: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite3'}?{query}")
    line = one_sentence(invoke("db", "upgrade"))
    assert line.startswith(f"Error: Bad value for DATABASE_URL: {message}"), line
    assert list(tmp_path.iterdir()) == [tmp_path / "work"]  # clean_env's working directory alone
