"""Logging as an operator sets it: one level and format for every process, quiet third parties."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def jukebot(clean_env: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = os.environ | {
        "PYTHONPATH": str(REPO),
        "DATABASE_URL": f"sqlite:///{clean_env / 'db.sqlite3'}",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "jukebot", *args], env=environment, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("args", [["-v", "db", "upgrade"], ["db", "upgrade", "-v"]])
def test_verbose_before_or_after_the_subcommand(clean_env: Path, args: list[str]) -> None:
    result = jukebot(clean_env, *args, JUKEBOT_LOG_FORMAT="json")
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stderr.splitlines()]  # every line is one JSON object
    assert [e for e in entries if e["level"] == "DEBUG" and e["message"].startswith("settings: ")]
    # aiosqlite's per-statement lines, alembic's plugin lines and asyncio's selector line stay out
    assert not [e for e in entries if e["logger"].split(".")[0] in {"aiosqlite", "alembic", "asyncio"}]


def test_secrets_never_show_in_logs_or_errors(clean_env: Path) -> None:
    url = "postgresql://jukebot:pw-hidden@127.0.0.1:1/jukebot"  # nothing listens on port 1
    result = jukebot(clean_env, "db", "upgrade", "-v", DATABASE_URL=url, DISCORD_TOKEN="tok-hidden")
    assert result.returncode == 1
    assert "settings: " in result.stderr  # the debug line lists every setting…
    assert "pw-hidden" not in result.stderr and "tok-hidden" not in result.stderr  # …without secrets
    assert result.stderr.splitlines()[-1].startswith(
        "Error: Cannot reach the database at postgresql+asyncpg://jukebot:***@127.0.0.1:1/jukebot ("
    )


def test_bad_log_level_is_one_sentence(clean_env: Path) -> None:
    result = jukebot(clean_env, "db", "upgrade", JUKEBOT_LOG_LEVEL="chatty")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "Error: Bad value for JUKEBOT_LOG_LEVEL: unknown log level 'chatty'; use one of DEBUG, INFO, WARNING, ERROR."
    )
