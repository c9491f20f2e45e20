"""Settings and database handling an operator gets wrong: each bad input is one sentence saying
what to fix (no traceback), a non-zero exit, nothing stored is lost, and no password shows."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import text
from sqlalchemy.engine import make_url

from jukebot.cli import main
from jukebot.doctor import Verdict, check_database
from jukebot.settings import Settings, SettingsError, hide_password, load_settings
from sampler.jukebox.registry import DEFAULT_MIRRORS
from sampler.worker.logs import LOG_LEVELS
from storage.engine import create_engine
from storage.migrate import current_revision, head_revision, upgrade_to_head
from tests.conftest import POSTGRES_URL

REPO = Path(__file__).parents[2]
SECRET = "SECRETQ-must-not-show"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def one_sentence(result: Result) -> str:
    """The command failed with exactly one `Error: …` line and no exception escaped."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def bad_setting(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> str:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith(f"Bad value for {name}: ") and "\n" not in message
    return message


def jukebot(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The installed command line as an operator runs it (a subprocess, output captured)."""
    return subprocess.run(
        [sys.executable, "-m", "jukebot", *args],
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _postgres(database: str, **query: str) -> str:
    url = make_url(POSTGRES_URL).set(database=database)
    return url.update_query_dict(query).render_as_string(hide_password=False) if query else str(url)


def _set_revision(url: str, revision: str) -> None:
    async def update() -> None:
        engine = create_engine(url)
        try:
            async with engine.begin() as connection:
                await connection.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
        finally:
            await engine.dispose()

    asyncio.run(update())


# 1. A password in the query string is hidden like one after the user name.


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            f"postgresql://127.0.0.1:5432/db?user=postgres&password={SECRET}",
            "postgresql://127.0.0.1:5432/db?password=***&user=postgres",
        ),
        (f"postgresql://u:{SECRET}@h/db?password={SECRET}", "postgresql://u:***@h/db?password=***"),
        ("postgresql://u:SECRETQ@ss@host/db", "postgresql://u:***@host/db"),  # an unencoded @
        ("postgresql://u:SECRETQ@a:b@host/db", "postgresql://u:***@host/db"),  # does not parse
        (f"bogus://u:x?password={SECRET}&a=b", "bogus://u:x?password=***&a=b"),
    ],
)
def test_hide_password_hides_query_and_unencoded_passwords(url: str, shown: str) -> None:
    assert hide_password(url) == shown


@pytest.mark.postgres
@pytest.mark.usefixtures("clean_env")
def test_a_query_string_password_never_shows(
    monkeypatch: pytest.MonkeyPatch, postgres_database: str, tmp_path: Path
) -> None:
    url = _postgres(postgres_database, password=SECRET)  # trust auth: the password is not needed
    monkeypatch.setenv("DATABASE_URL", url)
    assert SECRET not in load_settings().database_url_for_display
    check = invoke("db", "check")
    assert check.exit_code == 0, check.output
    assert "?password=***" in check.output and SECRET not in check.output
    # the debug settings dump and the database line (in a process of its own: -v sets up logging)
    doctor = jukebot({"DATABASE_URL": url, "XDG_DATA_HOME": str(tmp_path / "data")}, "-v", "doctor")
    assert "password=***" in doctor.stdout + doctor.stderr and SECRET not in doctor.stdout + doctor.stderr
    # `run`'s first log line names the database; a database that does not exist stops it after.
    env = {
        "DATABASE_URL": _postgres("jukebot_no_such_db", password=SECRET),
        "DISCORD_TOKEN": "not-a-real-token",
        "JUKEBOT_GPUS": "none",
        "XDG_DATA_HOME": str(tmp_path / "data"),
    }
    run = jukebot(env, "run")
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert "database postgresql+asyncpg://" in run.stderr and "password=***" in run.stderr
    assert SECRET not in run.stdout + run.stderr


@pytest.mark.usefixtures("clean_env")
def test_a_password_with_an_unencoded_at_is_refused_without_showing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = bad_setting(monkeypatch, "DATABASE_URL", "postgresql://u:SECRETQ@ss@127.0.0.1/jukebot")
    assert "unencoded '@': write it as %40" in message and "SECRETQ" not in message


# 2. A database migrated by a newer jukebot is refused, unchanged, by every command.


@pytest.mark.usefixtures("clean_env")
def test_a_schema_from_a_newer_jukebot_is_one_sentence_and_left_alone(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    upgrade_to_head(empty_db_url)
    _set_revision(empty_db_url, "0099")
    monkeypatch.setenv("DATABASE_URL", empty_db_url)
    says = (
        f"schema (revision 0099) is newer than this jukebot knows (latest {head_revision()}): upgrade jukebot"
    )
    for command in (["db", "upgrade"], ["db", "check"]):
        line = one_sentence(invoke(*command))
        assert says in line and "machines sharing one database must run the same version" in line
        assert "jukebot db upgrade" not in line
    doctor = check_database(load_settings())
    assert doctor.verdict is Verdict.FAIL and says in doctor.message
    run = jukebot(
        {"DATABASE_URL": empty_db_url, "DISCORD_TOKEN": "x", "JUKEBOT_GPUS": "none"},
        "run",
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert says in run.stderr.strip().splitlines()[-1]
    assert current_revision(empty_db_url) == "0099"  # untouched


@pytest.mark.usefixtures("clean_env")
def test_a_schema_revision_that_is_not_ours_is_one_sentence(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    upgrade_to_head(empty_db_url)
    _set_revision(empty_db_url, "f00dcafe")
    monkeypatch.setenv("DATABASE_URL", empty_db_url)
    line = one_sentence(invoke("db", "upgrade"))
    assert "schema revision f00dcafe, which this jukebot does not know" in line
    assert current_revision(empty_db_url) == "f00dcafe"


# 3. Postgres URLs: libpq's sslmode, unknown query parameters, ports out of range.


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("mode", ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"])
def test_libpq_sslmode_becomes_asyncpgs_ssl(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://bob@db.example/jukebot?sslmode={mode}")
    assert load_settings().database_url == f"postgresql+asyncpg://bob@db.example/jukebot?ssl={mode}"


@pytest.mark.postgres
@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("mode", ["disable", "prefer"])
def test_db_check_connects_with_sslmode(
    monkeypatch: pytest.MonkeyPatch, postgres_database: str, mode: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", _postgres(postgres_database, sslmode=mode))
    result = invoke("db", "check")
    assert result.exit_code == 0, (result.output, result.exception)
    assert f"?ssl={mode} answers and is at the latest schema" in result.output


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("url", "says"),
    [
        (
            "postgresql://postgres@127.0.0.1:5432/jukebot?foo=bar",
            "unknown query parameter foo in the Postgres URL; it accepts host, port, user, password, ssl, "
            "sslmode, target_session_attrs, prepared_statement_cache_size.",
        ),
        (
            "postgresql://postgres@127.0.0.1:5432/jukebot?sslmode=on",
            "sslmode/ssl=on in the Postgres URL is not",
        ),
        ("postgresql://postgres@127.0.0.1:99999/jukebot", "port 99999 is not a port number; use one from 1"),
        ("postgresql://postgres@127.0.0.1/jukebot?port=70000", "port 70000 is not a port number"),
        ("postgresql://postgres@127.0.0.1:0/jukebot", "port 0 is not a port number"),
        ("postgresql://postgres@127.0.0.1:5432", "a Postgres URL needs a database name after the host"),
        ("postgresql://postgres@127.0.0.1:5432/", "a Postgres URL needs a database name after the host"),
        ("", "it is empty; set it to a database URL"),
    ],
)
def test_postgres_urls_asyncpg_cannot_use_are_one_sentence(
    monkeypatch: pytest.MonkeyPatch, url: str, says: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    for command in (["db", "check"], ["doctor"]):  # neither reaches the server
        line = one_sentence(invoke(*command))
        assert line.startswith("Error: Bad value for DATABASE_URL: ") and says in line


# 5. A .env that is not UTF-8.


@pytest.mark.usefixtures("clean_env")
def test_a_dotenv_that_is_not_utf8_is_one_sentence() -> None:
    Path(".env").write_text("JUKEBOT_GPUS=cpu\n", encoding="utf-16")  # Windows Notepad's "Unicode"
    line = one_sentence(invoke("db", "check"))
    assert "it is not UTF-8 text" in line and line.endswith("save it as UTF-8.")
    assert str(Path(".env").absolute()) in line


@pytest.mark.usefixtures("clean_env")
def test_a_dotenv_with_a_utf8_byte_order_mark_is_read() -> None:
    Path(".env").write_text("DISCORD_TOKEN=from-dotenv\n", encoding="utf-8-sig")
    assert load_settings().require_token() == "from-dotenv"


# 6. Mirrors are http(s) URLs; empty means the default.


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("value", ["notaurl", "http://[::1", "ftp://mirror.example/models/", "https://"])
def test_a_mirror_that_is_not_an_http_url_is_one_sentence(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("JUKEBOT_MODEL_MIRRORS", f"https://ok.example/models/,{value}")
    line = one_sentence(invoke("models", "download", "1b_lyrics"))
    assert line.startswith(f"Error: Bad value for JUKEBOT_MODEL_MIRRORS: {value!r} is not a mirror URL")


# 6 and 9: an empty value means the default.


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    "name",
    [
        "JUKEBOT_MODEL_MIRRORS",
        "JUKEBOT_GPUS",
        "JUKEBOT_MODEL_DIR",
        "JUKEBOT_LOG_LEVEL",
        "JUKEBOT_MAX_LENGTH_SECONDS",
    ],
)
def test_an_empty_value_means_the_default(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    field = name.removeprefix("JUKEBOT_").lower()
    default = getattr(load_settings(), field)
    Path(".env").write_text(f"{name}=\n")
    assert getattr(load_settings(), field) == default
    if name == "JUKEBOT_MODEL_MIRRORS":
        assert default == list(DEFAULT_MIRRORS)
    monkeypatch.setenv(name, " ")
    assert getattr(load_settings(), field) == default


# 7. A SQLite path that cannot be a file.


@pytest.mark.usefixtures("clean_env")
def test_a_sqlite_url_naming_a_directory_is_one_sentence(tmp_path: Path) -> None:
    directory = tmp_path / "dir"
    directory.mkdir()
    env = {"DATABASE_URL": f"sqlite:///{directory}"}
    for command in (["db", "upgrade"], ["db", "check"]):
        done = jukebot(env, *command)
        assert done.returncode == 1
        assert done.stderr == (
            f"Error: DATABASE_URL names the directory {directory}, not a SQLite file: add a file name, "
            f"e.g. sqlite:///{directory / 'jukebot.sqlite3'}.\n"
        )
    assert list(directory.iterdir()) == []


@pytest.mark.usefixtures("clean_env")
def test_a_sqlite_file_under_a_file_is_one_sentence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("not a directory")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'plain' / 'jukebot.sqlite3'}")
    for command in (["db", "upgrade"], ["db", "check"]):
        line = one_sentence(invoke(*command))
        assert f"would be inside {tmp_path / 'plain'}, which is a file, not a directory" in line
    assert check_database(load_settings()).verdict is Verdict.FAIL


# 8. The documented values are the accepted ones.


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("value", ["critical", "WARN", "FATAL", "5"])
def test_only_the_documented_log_levels_are_accepted(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    message = bad_setting(monkeypatch, "JUKEBOT_LOG_LEVEL", value)
    assert message.endswith("use one of DEBUG, INFO, WARNING, ERROR.")


def test_the_readme_documents_the_log_levels_and_the_samples_limit() -> None:
    readme = (REPO / "README.md").read_text()
    levels = re.search(r"^\| `JUKEBOT_LOG_LEVEL` \| `INFO` \| (.*) \|$", readme, flags=re.MULTILINE)
    assert levels is not None and re.findall(r"`([A-Z]+)`", levels.group(1).split(" for ")[0]) == list(
        LOG_LEVELS
    )
    limit = next(m for m in Settings.model_fields["max_samples_per_job"].metadata if hasattr(m, "le"))
    assert (
        f"| `JUKEBOT_MAX_SAMPLES_PER_JOB` | 3 | most candidates per `/jukebox` (1 to {limit.le}) |" in readme
    )


# 9. Nitpicks: ~, non-finite numbers, negative channel ids, a check that creates nothing.


@pytest.mark.usefixtures("clean_env")
def test_home_is_expanded_in_the_model_dir_and_sqlite_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/operator")
    monkeypatch.setenv("JUKEBOT_MODEL_DIR", "~/models")
    monkeypatch.setenv("DATABASE_URL", "sqlite:///~/jukebot.sqlite3")
    settings = load_settings()
    assert settings.model_dir == Path("/home/operator/models")
    assert settings.database_url == "sqlite+aiosqlite:////home/operator/jukebot.sqlite3"


FLOAT_SETTINGS = [
    f"JUKEBOT_{name.upper()}" for name, f in Settings.model_fields.items() if f.annotation is float
]


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("name", FLOAT_SETTINGS)
@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_no_setting_is_infinite(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    bad_setting(monkeypatch, name, value)


def test_the_float_settings_are_all_found() -> None:
    assert {
        "JUKEBOT_MAX_LENGTH_SECONDS",
        "JUKEBOT_MAX_PRIME_SECONDS",
        "JUKEBOT_PROGRESS_MIN_EDIT_SECONDS",
        "JUKEBOT_WORKER_LEASE_SECONDS",
    } <= set(FLOAT_SETTINGS)


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("value", ["-5", "123,-456", "0"])
def test_channel_ids_are_positive(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    assert "(each a positive whole number)" in bad_setting(monkeypatch, "JUKEBOT_ALLOWED_CHANNELS", value)


@pytest.mark.usefixtures("clean_env")
def test_db_check_and_doctor_create_no_sqlite_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "new" / "jukebot.sqlite3"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{path}")
    line = one_sentence(invoke("db", "check"))
    assert "does not exist yet" in line and "run `jukebot db upgrade`, which creates it" in line
    doctor = check_database(load_settings())
    assert doctor.verdict is Verdict.WARN and "does not exist yet" in doctor.message
    assert not (tmp_path / "new").exists()
    assert invoke("db", "upgrade").exit_code == 0 and invoke("db", "check").exit_code == 0


@pytest.mark.usefixtures("clean_env")
def test_db_check_says_a_file_is_not_a_sqlite_database(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("my notes, not a database\n" * 100)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{path}")
    for command in (["db", "check"], ["db", "upgrade"]):
        line = one_sentence(invoke(*command))
        assert f"{path} is not a SQLite database: point DATABASE_URL at jukebot's database file" in line
    assert path.read_text() == "my notes, not a database\n" * 100


@pytest.mark.postgres
@pytest.mark.usefixtures("clean_env", "postgres_database")
def test_db_check_names_a_postgres_role_that_does_not_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    url = make_url(POSTGRES_URL).set(username="jukebot_no_such_role", password=SECRET)
    monkeypatch.setenv("DATABASE_URL", url.render_as_string(hide_password=False))
    line = one_sentence(invoke("db", "check"))
    assert line.startswith("Error: Postgres refused user 'jukebot_no_such_role' (role ")
    assert "fix the user or password in DATABASE_URL" in line and SECRET not in line


@pytest.mark.usefixtures("clean_env")
def test_a_worker_on_a_machine_set_to_run_no_workers_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUKEBOT_GPUS", "none")
    assert one_sentence(invoke("worker")) == (
        "Error: JUKEBOT_GPUS=none says this machine runs no workers, so `jukebot worker` has nothing to "
        "run: set JUKEBOT_GPUS to auto, cpu or GPU numbers such as 0,1 here."
    )


@pytest.mark.usefixtures("clean_env")
def test_the_longest_song_is_one_the_models_take(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model takes songs shorter than 600 s: a longer limit would let users queue jobs that
    only fail in a worker."""
    monkeypatch.setenv("JUKEBOT_MAX_LENGTH_SECONDS", "600")
    assert load_settings().max_length_seconds == 600.0
    refused = bad_setting(monkeypatch, "JUKEBOT_MAX_LENGTH_SECONDS", "900")
    assert "JUKEBOT_MAX_LENGTH_SECONDS" in refused and "less than or equal to 600" in refused


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("name", "value", "said"),
    [
        # Past about 3.3e12 s the prime decoder's memory limit overflowed: every prime was refused as a
        # file that crashed the decoder.
        ("JUKEBOT_MAX_PRIME_SECONDS", "1e15", "less than or equal to 600"),
        ("JUKEBOT_MAX_PRIME_SECONDS", "0.2", "greater than or equal to 0.5"),  # no prime fits under it
        ("JUKEBOT_MAX_LENGTH_SECONDS", "0.5", "greater than or equal to 1"),  # no request asks so little
        (
            "JUKEBOT_MAX_PRIME_BYTES",
            "9" * 400,
            "at most 2,147,483,647 bytes (2.0 GiB), not ",
        ),  # a traceback before
        # in the unit it was given in too, not in bytes alone
        ("JUKEBOT_MAX_PRIME_BYTES", "3GiB", "at most 2,147,483,647 bytes (2.0 GiB), not 3.0 GiB"),
        # in bytes where the units read the same: it said "(2.0 GiB), not 2.0 GiB"
        (
            "JUKEBOT_MAX_PRIME_BYTES",
            "2GiB",
            "at most 2,147,483,647 bytes (2.0 GiB), not 2,147,483,648 bytes.",
        ),
        ("JUKEBOT_MAX_PRIME_BYTES", "５MB", "use a number of bytes"),  # a full-width digit read as 5
    ],
)
def test_limits_no_request_could_meet_or_no_number_could_hold_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, said: str
) -> None:
    assert said in bad_setting(monkeypatch, name, value)


@pytest.mark.usefixtures("clean_env")
def test_a_byte_size_with_decimals_is_read_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUKEBOT_MAX_PRIME_BYTES", "25.5MiB")
    assert load_settings().max_prime_bytes == 26_738_688


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("variable", ["DATABASE_URL", "JUKEBOT_DATABASE_URL"])
def test_the_database_advice_names_the_variable_that_was_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str
) -> None:
    """With JUKEBOT_DATABASE_URL set (and no DATABASE_URL), the advice said "point DATABASE_URL at a
    file in a directory": a variable the operator never set."""
    (tmp_path / "plain").write_text("not a directory")
    monkeypatch.setenv(variable, f"sqlite:///{tmp_path / 'plain' / 'jukebot.sqlite3'}")
    line = one_sentence(invoke("db", "upgrade"))
    assert line.startswith(f"Error: {variable}'s SQLite file "), line
    assert line.endswith(f"not a directory: point {variable} at a file in a directory."), line


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("environment", "env_file", "read_from"),
    [
        ({"DISCORD_TOKEN": "Bot MTIz.abc.def"}, "", "DISCORD_TOKEN"),
        ({"JUKEBOT_DISCORD_TOKEN": "Bot MTIz.abc.def"}, "", "JUKEBOT_DISCORD_TOKEN"),
        # the environment is read before .env, whichever name each uses
        ({"DISCORD_TOKEN": "Bot MTIz.abc.def"}, "JUKEBOT_DISCORD_TOKEN=MTIz.good.one\n", "DISCORD_TOKEN"),
        (
            {},
            "DISCORD_TOKEN=MTIz.good.one\nJUKEBOT_DISCORD_TOKEN=Bot MTIz.abc.def\n",
            "JUKEBOT_DISCORD_TOKEN",
        ),
    ],
)
def test_the_token_advice_names_the_variable_read(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], env_file: str, read_from: str
) -> None:
    """The advice said DISCORD_TOKEN of a token read from JUKEBOT_DISCORD_TOKEN, and the other way
    round when the environment's DISCORD_TOKEN beat a JUKEBOT_DISCORD_TOKEN in .env."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    Path(".env").write_text(env_file)
    with pytest.raises(SettingsError, match=rf"^{read_from} holds a space \(is 'Bot ' in front of it\?\)"):
        load_settings().require_token()
