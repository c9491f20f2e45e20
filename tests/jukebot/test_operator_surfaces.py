"""What an operator meets in settings, `db`, `doctor` and `jobs`: each mistake gets one sentence
saying what to fix, before anything runs on a wrong setup."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import inspect
from sqlalchemy.engine import make_url

from jukebot.cli import main
from jukebot.doctor import Verdict, check_database, check_token, check_variables
from jukebot.settings import SettingsError, hide_password, load_settings, misspelled_variables
from storage.migrate import ForeignTables, current_revision, upgrade_to_head

pytestmark = pytest.mark.usefixtures("clean_env")


def invoke(*args: str, **env: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    return result.exit_code, result.output


# ------------------------------------------------------------------------------------ doctor


def test_doctor_fails_a_host_that_can_run_neither_the_bot_nor_workers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("JUKEBOT_GPUS", "none")
    check = check_token(load_settings(), online=False)
    assert check.verdict is Verdict.FAIL and "no DISCORD_TOKEN on a host with no workers" in check.message
    monkeypatch.setenv("JUKEBOT_GPUS", "cpu")  # a worker-only machine needs no token
    assert check_token(load_settings(), online=False).verdict is Verdict.WARN


# ------------------------------------------------------------------ another program's tables


async def test_a_database_holding_tables_named_like_ours_is_refused_unchanged(
    empty_db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy import text

    from storage.engine import create_engine

    engine = create_engine(empty_db_url)
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TABLE jobs (their_column INTEGER)"))
        await connection.execute(text("CREATE TABLE unrelated (x INTEGER)"))
    await engine.dispose()
    monkeypatch.setenv("DATABASE_URL", empty_db_url)

    with pytest.raises(ForeignTables) as raised:
        await _in_thread(current_revision, empty_db_url)
    assert raised.value.tables == ["jobs"]  # only a name we would create is in the way
    sentence = "has no jukebot schema but holds tables named like jukebot's (jobs)"
    check = await _in_thread(check_database, load_settings())
    assert check.verdict is Verdict.FAIL and sentence in check.message
    for command in (["db", "check"], ["db", "upgrade"]):
        code, output = await _in_thread(invoke, *command)
        assert code == 1 and sentence in output and "Traceback" not in output, output
    with pytest.raises(ForeignTables):
        await _in_thread(upgrade_to_head, empty_db_url)
    engine = create_engine(empty_db_url)
    async with engine.connect() as connection:  # their table is as it was, and nothing of ours was made
        assert (await connection.execute(text("SELECT their_column FROM jobs"))).all() == []
        tables = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
    assert sorted(tables) == ["jobs", "unrelated"]
    await engine.dispose()


async def _in_thread(function, *args):  # type: ignore[no-untyped-def]
    """The command line runs its own event loop: off this test's loop."""
    import asyncio

    return await asyncio.to_thread(function, *args)


# ---------------------------------------------------------------------------- DATABASE_URL


def test_a_password_with_an_at_and_a_slash_is_refused_and_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "postgresql://postgres:p@s/s3cr3t@127.0.0.1/db"
    assert "s3cr3t" not in hide_password(url)
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(SettingsError, match="unencoded '@': write it as %40") as raised:
        load_settings()
    assert "s3cr3t" not in str(raised.value)
    code, output = invoke("db", "check")
    assert code == 1 and "s3cr3t" not in output and "%40" in output


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_database")
def test_a_refused_user_given_in_the_query_string_is_named() -> None:
    from tests.conftest import POSTGRES_URL

    postgres = make_url(POSTGRES_URL)
    url = f"postgresql://{postgres.host}:{postgres.port}/{postgres.database}?user=jukebot_no_such_role"
    code, output = invoke("db", "check", DATABASE_URL=url)
    assert code == 1 and "Postgres refused user 'jukebot_no_such_role'" in output, output


# ---------------------------------------------------------------------------------- .env


def test_a_dot_env_line_that_cannot_be_read_stops_the_program_naming_it(clean_env: Path) -> None:
    """python-dotenv logged "could not parse statement starting at line 2" (twice, not naming the file)
    and read on: an unclosed quote took every line after it, so a DATABASE_URL below it was ignored
    and the default SQLite file used (found by an operator's audit)."""
    Path(".env").write_text(
        'JUKEBOT_GPUS=cpu\nJUKEBOT_LOG_LEVEL="debug\nDATABASE_URL=postgresql://db/jukebot\n'
    )
    with pytest.raises(SettingsError, match=r"\.env: line 2 is not NAME=value \(an unclosed quote\?\)"):
        load_settings()
    code, output = invoke("db", "check")
    assert code == 1 and "line 2 is not NAME=value" in output, output
    assert "could not parse" not in output and output.count("\n") == 1, output  # one sentence
    Path(".env").write_text('JUKEBOT_GPUS=cpu\n# a comment\n\nexport JUKEBOT_LOG_LEVEL="debug"\n')
    settings = load_settings()
    assert (settings.gpus, settings.log_level) == ("cpu", "DEBUG")


def test_a_dot_env_that_is_a_folder_or_a_broken_link_is_refused(clean_env: Path) -> None:
    env = Path(".env")
    env.mkdir()
    with pytest.raises(SettingsError, match=r"\.env: it is not a file"):
        load_settings()
    code, output = invoke("db", "check")
    assert code == 1 and "it is not a file" in output
    env.rmdir()
    env.symlink_to(clean_env / "gone.env")
    with pytest.raises(SettingsError, match=r"links to .*gone\.env, which does not exist"):
        load_settings()
    env.unlink()
    env.symlink_to(clean_env / "there.env")
    (clean_env / "there.env").write_text("JUKEBOT_GPUS=cpu\n")
    assert load_settings().gpus == "cpu"  # a link to a file is read


# ------------------------------------------------------------------------ misspelled names


def test_a_misspelled_setting_is_named_with_the_one_meant(monkeypatch: pytest.MonkeyPatch) -> None:
    Path(".env").write_text("JUKEBOT_LOGLEVEL=DEBUG\n")
    environ = {
        "JUKEBOT_GPU": "none",  # one letter short
        "jukebot_max_prime_byte": "1MiB",  # any case, as settings are read
        "JUKEBOT_GPUS": "cpu",  # a setting
        "JUKEBOT_VENV": ".venv",  # the install script's own
        "JUKEBOT_TORCH": "cpu",
        "JUKEBOT_TOY_MODEL_DIR": "/x",  # far from any setting
        "GPU": "x",
        # The settings also read without the prefix: a mistyped DATABASE_URL left the default SQLite
        # file in use, a queue no other machine shared, without a word (found by an operator's audit).
        "DATABSE_URL": "postgresql://db/jukebot",
        "DISCORD_TOKN": "x",
        "DATABASE": "x",  # far from any
    }
    assert misspelled_variables(environ) == [
        ("DATABSE_URL", "DATABASE_URL"),
        ("DISCORD_TOKN", "DISCORD_TOKEN"),
        ("JUKEBOT_GPU", "JUKEBOT_GPUS"),
        ("JUKEBOT_LOGLEVEL", "JUKEBOT_LOG_LEVEL"),
        ("JUKEBOT_MAX_PRIME_BYTE", "JUKEBOT_MAX_PRIME_BYTES"),
    ]
    # Beside the setting itself, a near name is another program's (Strapi's DATABASE_SSL): no warning.
    in_dotenv = [("JUKEBOT_LOGLEVEL", "JUKEBOT_LOG_LEVEL")]
    assert misspelled_variables({"DATABASE_URL": "x", "DATABASE_URI": "y", "DATABASE_SSL": "z"}) == in_dotenv
    assert misspelled_variables({"JUKEBOT_DISCORD_TOKEN": "x", "DISCORD_TOKENS": "y"}) == in_dotenv
    lines = [check.line() for check in check_variables(environ)]
    assert lines[0] == (
        "warn settings  DATABSE_URL is not a jukebot setting, so it is ignored: did you mean DATABASE_URL?"
    )
    assert (
        lines[2]
        == "warn settings  JUKEBOT_GPU is not a jukebot setting, so it is ignored: did you mean JUKEBOT_GPUS?"
    )
    monkeypatch.setenv("JUKEBOT_WORKER_LEASE_SECOND", "5")
    _, output = invoke("doctor", DATABASE_URL="sqlite:///db.sqlite3", JUKEBOT_GPUS="none")
    assert "warn settings  JUKEBOT_WORKER_LEASE_SECOND is not a jukebot setting" in output, output
    assert output.count("did you mean JUKEBOT_WORKER_LEASE_SECONDS?") == 1  # a check line, not also a log
    # Every other command logs it, once, as it starts.
    _, output = invoke("db", "check", DATABASE_URL="sqlite:///db.sqlite3")
    warning = "JUKEBOT_WORKER_LEASE_SECOND is not a jukebot setting, so it is ignored: did you mean "
    assert output.count(warning + "JUKEBOT_WORKER_LEASE_SECONDS?") == 1, output


# ---------------------------------------------------------------------------- value checks


@pytest.mark.parametrize(
    "name",
    ["JUKEBOT_WORKER_LEASE_SECONDS", "JUKEBOT_WORKER_REQUEUE_SECONDS", "JUKEBOT_WORKER_CHECKPOINT_SECONDS"],
)
def test_worker_timings_past_a_day_are_refused(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, "1e12")  # finite, but a lease past year 9999 fails every claim
    with pytest.raises(
        SettingsError, match=rf"Bad value for {name}: Input should be less than or equal to 86400"
    ):
        load_settings()
    monkeypatch.setenv(name, "86400")
    load_settings()


@pytest.mark.parametrize(
    "name,value,floor",
    [("JUKEBOT_WORKER_LEASE_SECONDS", "0.001", "5"), ("JUKEBOT_WORKER_REQUEUE_SECONDS", "0.001", "0.05")],
)
def test_a_lease_or_requeue_period_too_short_to_work_is_refused(
    name: str, value: str, floor: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 0.001 s lease failed a live worker's job as dead at every try; a 0.001 s requeue period kept an
    idle worker writing to the database in a loop."""
    monkeypatch.setenv(name, value)
    with pytest.raises(
        SettingsError, match=rf"Bad value for {name}: Input should be greater than or equal to {floor}"
    ):
        load_settings()
    monkeypatch.setenv(name, floor)
    load_settings()


@pytest.mark.parametrize(
    "flag,floor", [("--lease-seconds", "5.0"), ("--requeue-seconds", "0.05"), ("--stall-seconds", "60.0")]
)
def test_worker_timing_flags_too_short_to_work_are_refused(flag: str, floor: str) -> None:
    code, output = invoke("worker", flag, "0.001")
    assert code == 2 and f"0.001 is not in the range {floor}<=x<=86400" in output, output


@pytest.mark.parametrize(
    "flag", ["--lease-seconds", "--requeue-seconds", "--checkpoint-seconds", "--stall-seconds"]
)
def test_worker_timing_flags_past_a_day_are_refused(flag: str) -> None:
    code, output = invoke("worker", flag, "1e12")
    assert code == 2 and "1000000000000.0 is not in the range" in output, output


@pytest.mark.parametrize(
    "mirrors,expected",
    [
        (",", "name at least one mirror root"),
        ("https://a.example:99999/m", "is not a mirror URL"),
        ("https://a.example:abc/m", "is not a mirror URL"),
        ("https://a.example/m?x=1", "is not a mirror URL"),
        ("https://a.example/m#top", "is not a mirror URL"),
        ("https://a;b.example/m", "is not a mirror URL"),
    ],
)
def test_malformed_mirrors_are_refused(mirrors: str, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUKEBOT_MODEL_MIRRORS", mirrors)
    with pytest.raises(SettingsError, match=rf"Bad value for JUKEBOT_MODEL_MIRRORS: .*{expected}"):
        load_settings()


def test_well_formed_mirrors_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "JUKEBOT_MODEL_MIRRORS", "http://127.0.0.1:8080/m, https://[::1]:443/x/,https://cdn.example"
    )
    assert load_settings().model_mirrors == [
        "http://127.0.0.1:8080/m/",
        "https://[::1]:443/x/",
        "https://cdn.example/",
    ]


@pytest.mark.parametrize(
    "name,value",
    [
        ("JUKEBOT_DISCORD_API_BASE", "ws://proxy:8080/api/v10"),
        ("JUKEBOT_DISCORD_API_BASE", "http://proxy:8080/api v10"),
        ("JUKEBOT_DISCORD_GATEWAY", "http://proxy:7878"),
        ("JUKEBOT_DISCORD_GATEWAY", "ws://proxy:7878 x"),
        ("JUKEBOT_DISCORD_GATEWAY", "ws://"),
    ],
)
def test_discord_endpoints_need_their_own_scheme(
    name: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=rf"Bad value for {name}: .* is not a"):
        load_settings()


def test_discord_endpoints_of_the_right_scheme_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUKEBOT_DISCORD_API_BASE", "https://proxy:8080/api/v10/")
    monkeypatch.setenv("JUKEBOT_DISCORD_GATEWAY", "wss://proxy:7878")
    settings = load_settings()
    assert (settings.discord_api_base, settings.discord_gateway) == (
        "https://proxy:8080/api/v10",
        "wss://proxy:7878",
    )


def test_sqlite_file_untouched_by_a_refused_upgrade(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The same refusal on a SQLite file a user pointed jukebot at by mistake, byte for byte unchanged.
    path = tmp_path / "their.sqlite3"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE votes (who TEXT)")
        connection.execute("INSERT INTO votes VALUES ('them')")
    code, output = invoke("db", "upgrade", DATABASE_URL=f"sqlite:///{path}")
    assert code == 1 and "holds tables named like jukebot's (votes)" in output, output
    with sqlite3.connect(path) as connection:
        tables = [row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        assert tables == ["votes"]
        assert connection.execute("SELECT who FROM votes").fetchall() == [("them",)]


def test_a_question_mark_in_a_sqlite_path_is_refused_not_cut_off(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{clean_env}/q?r.sqlite3")  # would open a file named "q"
    with pytest.raises(
        SettingsError, match=r"query string has r\.sqlite3, which SQLite does not take .* as %3F"
    ):
        load_settings()
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{clean_env}/q%3Fr.sqlite3")
    assert load_settings().sqlite_path == clean_env / "q?r.sqlite3"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{clean_env}/db.sqlite3?timeout=30")
    assert load_settings().sqlite_path == clean_env / "db.sqlite3"


def test_a_bad_database_url_names_the_variable_it_was_read_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "sqlite:///fine.sqlite3")
    monkeypatch.setenv("JUKEBOT_DATABASE_URL", "")  # wins over DATABASE_URL, also empty
    with pytest.raises(SettingsError, match=r"^Bad value for JUKEBOT_DATABASE_URL: it is empty"):
        load_settings()
    monkeypatch.delenv("JUKEBOT_DATABASE_URL")
    monkeypatch.setenv("DATABASE_URL", "")
    with pytest.raises(SettingsError, match=r"^Bad value for DATABASE_URL: it is empty"):
        load_settings()


def test_commands_that_need_no_setting_warn_of_a_misspelled_one_too(tmp_path: Path) -> None:
    """`curate` and `sample --model_dir` read no setting, yet every command warns of a misspelled
    variable, and an unrelated bad setting stops neither."""
    import numpy as np

    from sampler.audio import SAMPLE_RATE, wav_bytes

    tone = np.sin(np.arange(3 * SAMPLE_RATE) * 2 * np.pi * 440 / SAMPLE_RATE).astype(np.float32) * 0.5
    for name in ("a.wav", "b.wav"):
        (tmp_path / name).write_bytes(wav_bytes(tone))
    warning = "JUKEBOT_GPU is not a jukebot setting, so it is ignored: did you mean JUKEBOT_GPUS?"
    misspelled = {"JUKEBOT_GPU": "cpu", "JUKEBOT_MAX_LENGTH_SECONDS": "9000"}  # and one out of range

    code, output = invoke(
        "curate",
        str(tmp_path / "a.wav"),
        str(tmp_path / "b.wav"),
        "-o",
        str(tmp_path / "piece.ogg"),
        **misspelled,
    )
    assert code == 0 and (tmp_path / "piece.ogg").is_file(), output
    assert output.count(warning) == 1, output

    empty = tmp_path / "no-models"
    empty.mkdir()
    _code, output = invoke(
        "sample", "--model=1b_lyrics", f"--model_dir={empty}", f"--name={tmp_path / 'run'}", **misspelled
    )
    assert output.count(warning) == 1, output
