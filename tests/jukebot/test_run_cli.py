"""`jukebot run` as an operator starts it (a subprocess): failures are one sentence, never a password.

Discord is the fake server in tests/bot/fake_discord.py, reached through the JUKEBOT_DISCORD_API_BASE
and JUKEBOT_DISCORD_GATEWAY settings as a rate-limit proxy would be.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.bot.fake_discord import FakeDiscord
from tests.conftest import POSTGRES_URL

REPO = Path(__file__).parents[2]
PASSWORD = "pw-that-must-not-show"


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def run_env(clean_env: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "JUKEBOT_GPUS": "none",  # the bot only: these tests are about starting it
        "DATABASE_URL": f"sqlite:///{clean_env / 'jukebot.sqlite3'}",
        "DISCORD_TOKEN": "not-a-real-token",
    }


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as fake:
        fake.add_guild("Test Server", channels=("general",))
        yield fake


def pointed_at(fake: FakeDiscord) -> dict[str, str]:
    return {"JUKEBOT_DISCORD_API_BASE": fake.api_base, "JUKEBOT_DISCORD_GATEWAY": fake.gateway_url}


async def start(env: dict[str, str], *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "jukebot", "run", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def jukebot_run(env: dict[str, str]) -> tuple[int, str]:
    """Run `jukebot run` to its end: exit status and the error output's last line."""
    process = await start(env)
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    text = stderr.decode()
    assert "Traceback" not in text, text
    lines = text.strip().splitlines()
    assert process.returncode is not None
    return process.returncode, lines[-1] if lines else ""


async def test_unreachable_discord_is_one_sentence(run_env: dict[str, str]) -> None:
    base = f"http://127.0.0.1:{closed_port()}/api/v10"
    code, last = await jukebot_run(run_env | {"JUKEBOT_DISCORD_API_BASE": base})
    assert code == 1
    assert last.startswith(f"Error: Cannot reach Discord at {base} (")
    assert last.endswith("check the network and JUKEBOT_DISCORD_API_BASE.")


async def test_a_token_discord_refuses_is_one_sentence(run_env: dict[str, str], fake: FakeDiscord) -> None:
    code, last = await jukebot_run(run_env | pointed_at(fake))
    assert code == 1
    assert last.startswith("Error: Discord refused the token:") and "DISCORD_TOKEN" in last
    assert fake.calls("GET", "/users/@me")  # it did ask the fake, through the setting


@pytest.mark.postgres
async def test_a_missing_postgres_database_is_one_sentence_without_the_password(
    run_env: dict[str, str],
) -> None:
    url = make_url(POSTGRES_URL).set(database="jukebot_no_such_db", password=PASSWORD)
    env = run_env | {"DATABASE_URL": url.render_as_string(hide_password=False)}
    process = await start(env)
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)
    output = (stdout + stderr).decode()
    assert process.returncode == 1
    assert PASSWORD not in output
    assert "Traceback" not in output
    assert (
        output.strip().splitlines()[-1].startswith("Error: Database 'jukebot_no_such_db' does not exist on ")
    )
    assert "createdb jukebot_no_such_db" in output and ":***@" in output


async def test_a_malformed_url_never_shows_its_password(run_env: dict[str, str]) -> None:
    env = run_env | {"DATABASE_URL": f"postgresql://jukebot:{PASSWORD}@db:notaport/jukebot"}
    code, last = await jukebot_run(env)
    assert code == 1
    assert last.startswith("Error: Bad value for DATABASE_URL:") and PASSWORD not in last


async def test_runs_against_the_configured_discord_and_stops_on_sigterm(
    run_env: dict[str, str], fake: FakeDiscord
) -> None:
    env = run_env | pointed_at(fake) | {"DISCORD_TOKEN": fake.token}
    process = await start(env)
    try:
        await fake.wait_for(lambda: fake.live_sessions and fake.synced_commands(), timeout_s=60)
        assert "jukebox" in fake.synced_commands()
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    text = stderr.decode()
    assert process.returncode == 0, text
    first = text.splitlines()[0]  # says what is in use
    assert "database sqlite+aiosqlite:///" in first and "models in" in first, text
    assert "alembic" not in text and "voice will NOT be supported" not in text, text
