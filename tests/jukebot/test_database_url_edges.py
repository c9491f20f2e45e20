"""DATABASE_URL values that cannot name a database jukebot shares with its workers: an in-memory SQLite
database, bytes that are not UTF-8, and spaces or line breaks around the URL."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy.engine import make_url

from jukebot.cli import main
from jukebot.settings import SettingsError, load_settings
from tests.conftest import POSTGRES_URL

MEMORY = (
    "Error: Bad value for DATABASE_URL: an in-memory SQLite database (:memory:) lives only as long as one "
    "process, and jukebot shares its database with its worker processes, so it needs a file: give its "
    "path, e.g. sqlite:////path/to/jukebot.sqlite3.\n"
)


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize(
    "url", ["sqlite:///:memory:", "sqlite+aiosqlite:///:memory:", "sqlite:///file::memory:"]
)
@pytest.mark.parametrize("command", [["db", "upgrade"], ["db", "check"]])
def test_an_in_memory_database_is_refused(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, url: str, command: list[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)

    result = cli(*command)

    assert (result.exit_code, result.output) == (1, MEMORY)


def test_a_url_that_is_not_utf8_is_refused_by_name(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What Python makes of the byte 0xff in the environment (surrogateescape).
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{clean_env}/j\udcff.db")

    result = cli("db", "check")

    assert result.exit_code == 1
    column = len(f"sqlite:///{clean_env}/j") + 1
    assert result.output == (
        f"Error: Bad value for DATABASE_URL: it is not UTF-8 text (byte 0xff at character {column}); "
        "set it again as UTF-8, writing any other character of a file name or password %-encoded "
        "(e.g. %FF).\n"
    )
    assert list(clean_env.glob("j*")) == []


@pytest.mark.parametrize("padding", [" ", "\t", " \n ", "\n"])
def test_spaces_around_a_sqlite_url_are_dropped(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, padding: str
) -> None:
    path = clean_env / "l.db"
    monkeypatch.setenv("DATABASE_URL", f"{padding}sqlite:///{path}{padding}")

    assert load_settings().database_url == f"sqlite+aiosqlite:///{path}"
    upgraded = cli("db", "upgrade")

    assert upgraded.exit_code == 0, upgraded.output
    assert path.is_file()
    assert {p.name for p in clean_env.iterdir() if p.name.startswith("l.db")} <= {
        "l.db",
        "l.db-wal",
        "l.db-shm",
    }


def test_a_url_of_only_spaces_is_still_empty(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", " \n ")
    with pytest.raises(SettingsError, match="Bad value for DATABASE_URL: it is empty"):
        load_settings()


@pytest.mark.postgres
def test_a_postgres_url_with_a_line_break_after_it_is_one_line(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = make_url(POSTGRES_URL).set(database="jukebot_t_no_such_database")
    monkeypatch.setenv("DATABASE_URL", url.render_as_string(hide_password=False) + " \n ")

    result = cli("db", "check")

    assert result.exit_code == 1
    assert result.output.count("\n") == 1, result.output
    assert result.output.startswith("Error: Database 'jukebot_t_no_such_database' does not exist on ")
