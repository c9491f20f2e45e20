from __future__ import annotations

import re
from pathlib import Path

import pytest

from jukebot.settings import SettingsError, load_settings


def test_defaults_work_on_a_fresh_machine(clean_env: Path) -> None:
    settings = load_settings()
    assert (
        settings.database_url == f"sqlite+aiosqlite:///{clean_env / 'data' / 'jukebot' / 'jukebot.sqlite3'}"
    )
    assert settings.model_dir == clean_env / "cache" / "jukebot" / "models"
    assert settings.discord_token is None
    assert settings.gpu_indices() is None
    assert settings.allowed_channels == []


def test_missing_token_is_one_clear_sentence(clean_env: Path) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings().require_token()
    message = str(info.value)
    assert message.startswith("No Discord token: set DISCORD_TOKEN")
    assert "\n" not in message


def test_an_empty_jukebot_token_beside_a_set_one_is_named(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It said to set DISCORD_TOKEN, which was set: the empty JUKEBOT_DISCORD_TOKEN is read first (found
    by an operator's audit)."""
    monkeypatch.setenv("DISCORD_TOKEN", "MTIz.abc.def")
    monkeypatch.setenv("JUKEBOT_DISCORD_TOKEN", "")
    with pytest.raises(SettingsError, match=r"JUKEBOT_DISCORD_TOKEN is set but empty, and it is read before"):
        load_settings().require_token()
    monkeypatch.delenv("JUKEBOT_DISCORD_TOKEN")
    assert load_settings().require_token() == "MTIz.abc.def"
    monkeypatch.delenv("DISCORD_TOKEN")
    Path(".env").write_text("JUKEBOT_DISCORD_TOKEN=\nDISCORD_TOKEN=MTIz.abc.def\n")  # so in .env too
    with pytest.raises(SettingsError, match=r"JUKEBOT_DISCORD_TOKEN is set but empty, and it is read before"):
        load_settings().require_token()
    # …but not where the DISCORD_TOKEN read is empty too (a later line): removing the other would not help
    Path(".env").write_text("JUKEBOT_DISCORD_TOKEN=\nDISCORD_TOKEN=MTIz.abc.def\nDISCORD_TOKEN=\n")
    with pytest.raises(SettingsError, match=r"^No Discord token: set DISCORD_TOKEN"):
        load_settings().require_token()
    Path(".env").write_text("JUKEBOT_DISCORD_TOKEN=\n")  # nor where it is not given at all
    with pytest.raises(SettingsError, match=r"^No Discord token: set DISCORD_TOKEN"):
        load_settings().require_token()


def test_an_empty_token_in_the_environment_hiding_the_env_files_is_named(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stray `export DISCORD_TOKEN=` (or a service's `Environment=DISCORD_TOKEN=`) is read before
    `.env`: the error said to set DISCORD_TOKEN in the .env file, which held it."""
    Path(".env").write_text("DISCORD_TOKEN=MTIz.abc.def\n")
    monkeypatch.setenv("DISCORD_TOKEN", "")
    with pytest.raises(SettingsError) as info:
        load_settings().require_token()
    assert str(info.value) == (
        "No Discord token: DISCORD_TOKEN is set but empty in the environment, which is read before the "
        ".env file that holds the token: unset DISCORD_TOKEN, or set the token in it."
    )
    monkeypatch.delenv("DISCORD_TOKEN")
    assert load_settings().require_token() == "MTIz.abc.def"
    Path(".env").write_text("DISCORD_TOKEN=MTIz.abc.def\nDISCORD_TOKEN=\n")  # the file's own is empty
    monkeypatch.setenv("DISCORD_TOKEN", "")
    with pytest.raises(SettingsError, match=r"^No Discord token: set DISCORD_TOKEN"):
        load_settings().require_token()


def test_a_token_with_bot_in_front_is_named_before_any_login(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pasted with 'Bot ' in front (as the Authorization header carries it), the token went to Discord,
    whose answer is only "improper token"; `doctor` called it set (found by an operator's audit)."""
    from jukebot.doctor import Verdict, check_token

    monkeypatch.setenv("DISCORD_TOKEN", "Bot MTIz.abc.def")
    settings = load_settings()
    with pytest.raises(SettingsError, match=r"^DISCORD_TOKEN holds a space \(is 'Bot ' in front of it\?\)"):
        settings.require_token()
    check = check_token(settings, online=False)
    assert check.verdict is Verdict.FAIL and "holds a space" in check.message
    assert "MTIz" not in check.message  # (never the token itself)
    monkeypatch.setenv("DISCORD_TOKEN", "  MTIz.abc.def \n")  # around it: dropped, as before
    assert load_settings().require_token() == "MTIz.abc.def"


def test_token_from_env_and_dotenv(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Path(".env").write_text("DISCORD_TOKEN=from-dotenv\nJUKEBOT_MAX_SAMPLES_PER_JOB=5\n")
    settings = load_settings()
    assert settings.require_token() == "from-dotenv"
    assert settings.max_samples_per_job == 5
    monkeypatch.setenv("JUKEBOT_DISCORD_TOKEN", "from-env")
    assert load_settings().require_token() == "from-env"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://bob@db.example:5432/jukebot", "postgresql+asyncpg://bob@db.example:5432/jukebot"),
        ("postgres://bob:pw@127.0.0.1/jb", "postgresql+asyncpg://bob:pw@127.0.0.1/jb"),
        ("sqlite:////tmp/x.sqlite3", "sqlite+aiosqlite:////tmp/x.sqlite3"),
        ("postgresql+asyncpg://u@h/d", "postgresql+asyncpg://u@h/d"),
    ],
)
def test_database_urls_are_normalised_to_async_drivers(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, url: str, expected: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    assert load_settings().database_url == expected


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("not a url", "is not a database URL"),
        ("mysql://root@localhost/db", "driver 'mysql' is not supported"),
        ("sqlite://", "needs a file path"),
        ("postgresql:///jukebot", "needs a host"),
    ],
)
def test_malformed_database_url_stops_with_one_sentence(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, url: str, needle: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    with pytest.raises(SettingsError) as info:
        load_settings()
    message = str(info.value)
    assert message.startswith("Bad value for DATABASE_URL:")
    assert needle in message
    assert "\n" not in message


def test_lists_and_limits_from_env(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUKEBOT_ALLOWED_CHANNELS", "111, 222 333")
    monkeypatch.setenv("JUKEBOT_GPUS", "0,2")
    monkeypatch.setenv("JUKEBOT_MODEL_MIRRORS", "https://a.example/models,https://b.example/m/")
    settings = load_settings()
    assert settings.allowed_channels == [111, 222, 333]
    assert settings.gpu_indices() == [0, 2]
    assert settings.model_mirrors == ["https://a.example/models/", "https://b.example/m/"]
    monkeypatch.setenv("JUKEBOT_GPUS", "cpu")
    assert load_settings().gpu_indices() == []


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        (
            "JUKEBOT_GPUS",
            "first",
            "Bad value for JUKEBOT_GPUS: use 'auto', 'all', 'cpu', 'none' or GPU indices",
        ),
        # no index at all, or a negative one (silently one CPU worker, or refused only at start)
        ("JUKEBOT_GPUS", ",", "Bad value for JUKEBOT_GPUS: use 'auto', 'all', 'cpu', 'none' or GPU indices"),
        (
            "JUKEBOT_GPUS",
            "0,-1",
            "Bad value for JUKEBOT_GPUS: use 'auto', 'all', 'cpu', 'none' or GPU indices",
        ),
        # "unlimited" past what the database stores with each job: every enqueue failed on Postgres
        (
            "JUKEBOT_MAX_RUNNING_JOBS_PER_USER",
            "3000000000",
            "Bad value for JUKEBOT_MAX_RUNNING_JOBS_PER_USER",
        ),
        ("JUKEBOT_MAX_QUEUED_JOBS_PER_USER", "3000000000", "Bad value for JUKEBOT_MAX_QUEUED_JOBS_PER_USER"),
        ("JUKEBOT_MAX_SAMPLES_PER_JOB", "0", "Bad value for JUKEBOT_MAX_SAMPLES_PER_JOB"),
        (
            "JUKEBOT_ALLOWED_CHANNELS",
            "general",
            "Bad value for JUKEBOT_ALLOWED_CHANNELS: use channel ids separated",
        ),
    ],
)
def test_bad_values_name_the_variable(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=needle):
        load_settings()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("26214400", 26214400),
        ("25MiB", 25 * 1024**2),
        ("25 mib", 25 * 1024**2),
        ("8MB", 8_000_000),
        ("1.5GiB", 1536 * 1024**2),
        ("500KiB", 500 * 1024),
        ("100 B", 100),
    ],
)
def test_prime_size_in_bytes_or_with_a_unit(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, value: str, expected: int
) -> None:
    monkeypatch.setenv("JUKEBOT_MAX_PRIME_BYTES", value)
    assert load_settings().max_prime_bytes == expected


@pytest.mark.parametrize("value", ["25 MiBs", "MiB", "25 XB", "-3", "0MiB", "lots"])
def test_a_bad_prime_size_names_the_variable_and_the_forms(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("JUKEBOT_MAX_PRIME_BYTES", value)
    with pytest.raises(SettingsError, match=r"^Bad value for JUKEBOT_MAX_PRIME_BYTES: ") as info:
        load_settings()
    assert "\n" not in str(info.value)


def test_operations_settings(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "JUKEBOT_LOG_LEVEL": "debug",
        "JUKEBOT_LOG_FORMAT": "json",
        "JUKEBOT_DISCORD_API_BASE": "http://proxy:8080/api/v10/",
        "JUKEBOT_DISCORD_GATEWAY": "ws://proxy:7878",
        "JUKEBOT_WORKER_LEASE_SECONDS": "120",
        "JUKEBOT_WORKER_REQUEUE_SECONDS": "10",
        "JUKEBOT_WORKER_CHECKPOINT_SECONDS": "0",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert (settings.log_level, settings.log_format) == ("DEBUG", "json")
    assert settings.discord_api_base == "http://proxy:8080/api/v10"
    assert settings.discord_gateway == "ws://proxy:7878"
    config = settings.worker_config()
    assert (config.lease_seconds, config.requeue_seconds, config.checkpoint_seconds) == (120, 10, 0)


def test_choices_and_paths_written_loosely_are_read_as_meant(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`JSON` was refused where `debug` was taken, and a `\r` a Windows .env leaves at a line's end
    became part of the model folder's name (operator audit)."""
    monkeypatch.setenv("JUKEBOT_LOG_FORMAT", " JSON\r")
    monkeypatch.setenv("JUKEBOT_MODEL_DIR", f"{clean_env}/models\r")
    settings = load_settings()
    assert settings.log_format == "json"
    assert settings.model_dir == clean_env / "models"


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("JUKEBOT_LOG_LEVEL", "loud", "Bad value for JUKEBOT_LOG_LEVEL: unknown log level 'loud'"),
        ("JUKEBOT_LOG_FORMAT", "xml", "Bad value for JUKEBOT_LOG_FORMAT:"),
        (
            "JUKEBOT_DISCORD_API_BASE",
            "proxy:8080",
            "Bad value for JUKEBOT_DISCORD_API_BASE: 'proxy:8080' is not",
        ),
        ("JUKEBOT_WORKER_LEASE_SECONDS", "0", "Bad value for JUKEBOT_WORKER_LEASE_SECONDS:"),
    ],
)
def test_bad_operations_settings_are_one_sentence(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match="^" + re.escape(says)):
        load_settings()


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("JUKEBOT_DISCORD_API_BASE", "http://proxyuser:S3cretPW@127.0.0.1:1/api/v10"),
        ("JUKEBOT_DISCORD_GATEWAY", "wss://proxyuser:S3cretPW@gateway.example"),
    ],
)
def test_a_discord_endpoint_with_credentials_is_refused_without_showing_them(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, name: str, url: str
) -> None:
    """aiohttp will not combine credentials in the URL with discord.py's Authorization header: `run`
    ended in a traceback, and `-v` logged the password with the settings."""
    monkeypatch.setenv(name, url)
    with pytest.raises(SettingsError) as info:
        load_settings()
    said = str(info.value)
    assert said.startswith(f"Bad value for {name}: ") and "holds credentials (user:password@)" in said, said
    assert "S3cretPW" not in said and "proxyuser" not in said


def test_database_url_password_is_hidden_in_errors_and_display(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://jukebot:s3cret@db/jukebot")
    assert load_settings().database_url_for_display == "postgresql+asyncpg://jukebot:***@db/jukebot"
    for bad in ("postgresql://jukebot:s3cret@db:port/jukebot", "bogus+x://jukebot:s3cret@db/jukebot"):
        monkeypatch.setenv("DATABASE_URL", bad)
        with pytest.raises(SettingsError) as info:
            load_settings()
        assert "s3cret" not in str(info.value)
