"""A NUL byte in a path or SQLite file name is one sentence naming the setting (not a traceback), and
JUKEBOT_DATABASE_URL, wherever it is set, wins over DATABASE_URL (the environment over .env for one name)."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from jukebot.settings import Settings, load_settings
from tests.jukebot.test_settings_hardening import invoke, one_sentence


def write_env(*lines: str) -> None:
    """A `.env` in the working directory (clean_env's own)."""
    Path(".env").write_bytes("".join(f"{line}\n" for line in lines).encode())


# 1. NUL bytes.

PATH_SETTINGS = [
    f"JUKEBOT_{name.upper()}"
    for name, field in Settings.model_fields.items()
    if field.annotation is Path or Path in typing.get_args(field.annotation)
]


def test_the_path_settings_are_all_found() -> None:
    assert "JUKEBOT_MODEL_DIR" in PATH_SETTINGS


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("name", PATH_SETTINGS)
@pytest.mark.parametrize("command", [["models", "list"], ["doctor"], ["db", "upgrade"]])
def test_a_nul_byte_in_a_path_from_env_is_one_sentence(name: str, command: list[str]) -> None:
    write_env(f"{name}=/tmp/a\0b")  # the environment cannot hold a NUL byte; .env can
    line = one_sentence(invoke(*command))
    assert line == (
        f"Error: Bad value for {name}: the path holds a NUL byte, which no file or folder name may "
        "hold: remove it."
    )


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("name", ["JUKEBOT_DATABASE_URL", "DATABASE_URL"])
@pytest.mark.parametrize("command", [["db", "upgrade"], ["db", "check"], ["doctor"]])
def test_a_nul_byte_in_a_sqlite_file_name_is_one_sentence(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str, command: list[str]
) -> None:
    monkeypatch.setenv(name, f"sqlite:///{tmp_path}/a%00b.db")
    line = one_sentence(invoke(*command))
    assert line == (
        f"Error: Bad value for {name}: the SQLite file name holds a NUL byte (%00), which no file or "
        "database name may hold: remove it."
    )
    assert list(tmp_path.glob("a*")) == []


@pytest.mark.usefixtures("clean_env")
def test_a_nul_byte_in_a_postgres_url_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://user@127.0.0.1:5432/jukebot%00x")
    line = one_sentence(invoke("db", "upgrade"))
    assert line.startswith("Error: Bad value for DATABASE_URL: the URL holds a NUL byte (%00)"), line


# 2. Which database URL is read.


def upgraded(tmp_path: Path) -> list[str]:
    """`jukebot db upgrade`, and the SQLite files that then exist in tmp_path."""
    result = invoke("db", "upgrade")
    assert result.exit_code == 0, (result.output, result.exception)
    return sorted(path.name for path in tmp_path.glob("*.db"))


@pytest.mark.usefixtures("clean_env")
def test_jukebot_database_url_in_env_file_wins_over_database_url_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/generic.db")  # another program's
    write_env(f"JUKEBOT_DATABASE_URL=sqlite:///{tmp_path}/own.db")
    assert upgraded(tmp_path) == ["own.db"]


@pytest.mark.usefixtures("clean_env")
def test_jukebot_database_url_in_the_environment_wins_over_database_url_in_env_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("JUKEBOT_DATABASE_URL", f"sqlite:///{tmp_path}/own.db")
    write_env(f"DATABASE_URL=sqlite:///{tmp_path}/generic.db")
    assert upgraded(tmp_path) == ["own.db"]


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("name", ["JUKEBOT_DATABASE_URL", "DATABASE_URL"])
def test_the_environment_beats_env_file_for_the_same_name(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> None:
    monkeypatch.setenv(name, f"sqlite:///{tmp_path}/environment.db")
    write_env(f"{name}=sqlite:///{tmp_path}/file.db")
    assert upgraded(tmp_path) == ["environment.db"]


@pytest.mark.usefixtures("clean_env")
def test_both_in_env_file_reads_jukebot_database_url(tmp_path: Path) -> None:
    write_env(
        f"DATABASE_URL=sqlite:///{tmp_path}/generic.db", f"jukebot_database_url=sqlite:///{tmp_path}/own.db"
    )
    assert upgraded(tmp_path) == ["own.db"]


@pytest.mark.usefixtures("clean_env")
def test_an_error_names_the_variable_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # A bad generic one is not read when jukebot's own is set (was: refused, and named as jukebot's).
    monkeypatch.setenv("DATABASE_URL", "mysql://someone@host/theirs")
    write_env(f"JUKEBOT_DATABASE_URL=sqlite:///{tmp_path}/own.db")
    assert upgraded(tmp_path) == ["own.db"]
    # A bad own one, in .env, is named as such even with a good generic one in the environment.
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/generic.db")
    write_env("JUKEBOT_DATABASE_URL=mysql://someone@host/ours")
    line = one_sentence(invoke("db", "upgrade"))
    assert line.startswith("Error: Bad value for JUKEBOT_DATABASE_URL: database driver 'mysql'"), line
    write_env("JUKEBOT_DATABASE_URL=")  # empty: still the one read, and refused
    line = one_sentence(invoke("db", "upgrade"))
    assert line.startswith("Error: Bad value for JUKEBOT_DATABASE_URL: it is empty"), line
    # Only the generic one set: its errors name it.
    Path(".env").unlink()
    monkeypatch.setenv("DATABASE_URL", "mysql://someone@host/theirs")
    line = one_sentence(invoke("db", "upgrade"))
    assert line.startswith("Error: Bad value for DATABASE_URL: database driver 'mysql'"), line
    assert sorted(path.name for path in tmp_path.glob("*.db")) == ["own.db"]


@pytest.mark.usefixtures("clean_env")
def test_an_explicit_database_url_beats_both_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("JUKEBOT_DATABASE_URL", f"sqlite:///{tmp_path}/own.db")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/generic.db")
    settings = load_settings(database_url=f"sqlite:///{tmp_path}/given.db")
    assert settings.sqlite_path == tmp_path / "given.db"
