"""`jukebot run` stopped gracefully while posting a job's results hands the rest on at once.

The bot is `jukebot run` itself (a subprocess, no local workers) against the fake Discord. It posts
sample 1 of 3; the fake holds its upload of sample 2 (a barrier, no timing), before Discord saw it or
after Discord posted it but before the bot heard back. The test then stops the bot as an operator
would: SIGTERM to its process (a service manager, Docker), or SIGINT / SIGHUP to its whole process
group (Ctrl-C in its terminal, the terminal or ssh session closed). The bot gives its claim on the
results back as it stops, so the next bot posts samples 2 and 3 without waiting out the claim: its
store's clock is frozen at a time when the stopped bot's claim is still valid (had it not been given
back, the next bot could not take it).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.relay import RESULTS_LEASE_S
from storage.engine import create_engine
from storage.models import utcnow
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord
from tests.bot.harness import (
    PlayedWorker,
    assert_posted_once,
    make_bot,
    progress_message,
    relay_of,
    sample_message,
    when,
)
from tests.conftest import FakeClock

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0  # a fresh interpreter importing discord.py, on two shared cores
STOP_TIMEOUT_S = 30.0
DONE = "✅ Done: 3 samples below."
SAMPLE_POSTS = ("POST", "/channels/{channel_id}/messages")


def settings_environment(db_url: str, **extra: str) -> dict[str, str]:
    """This environment without jukebot settings, plus the repository, the database and `extra`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("JUKEBOT_") and name not in {"DISCORD_TOKEN", "DATABASE_URL"}
    }
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return env | {"PYTHONPATH": path, "DATABASE_URL": db_url, **extra}


def jukebot_environment(fake: FakeDiscord, db_url: str, **extra: str) -> dict[str, str]:
    """The settings of a `jukebot run` against `fake` (and `extra`)."""
    return settings_environment(
        db_url,
        DISCORD_TOKEN=fake.token,
        JUKEBOT_DISCORD_API_BASE=fake.api_base,
        JUKEBOT_DISCORD_GATEWAY=fake.gateway_url,
        JUKEBOT_PROGRESS_POLL_SECONDS="0.1",  # nothing here can poke its relay
        JUKEBOT_PROGRESS_MIN_EDIT_SECONDS="0",
        **extra,
    )


@dataclass
class JukebotRun:
    """`jukebot run` in a session (process group) of its own, as a terminal's foreground job is."""

    process: subprocess.Popen[bytes]
    log_file: Path

    @property
    def pgid(self) -> int:
        return os.getpgid(self.process.pid)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def stop_as(self, how: str) -> None:
        """ "SIGTERM" to the process only; "SIGINT group" / "SIGHUP group" to every process in its
        group, as a terminal does."""
        name, _, scope = how.partition(" ")
        signum = signal.Signals[name]
        if scope == "group":
            os.killpg(self.pgid, signum)
        else:
            self.process.send_signal(signum)

    async def exit_code(self, within: float = STOP_TIMEOUT_S) -> int:
        return await asyncio.to_thread(self.process.wait, within)


def start_jukebot_run(
    command: list[str], env: dict[str, str], cwd: Path, log_file: Path
) -> subprocess.Popen[bytes]:
    with open(log_file, "ab") as output:
        return subprocess.Popen(
            command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )


@pytest.fixture
async def jukebot_run(
    fake_discord: FakeDiscord, sqlite_url: str, tmp_path: Path
) -> AsyncIterator[JukebotRun]:
    """`jukebot run` (the bot only: JUKEBOT_GPUS=none) on the test's database; killed if the test
    leaves it running, its log printed at the end (pytest shows it when the test fails)."""
    cwd = tmp_path / "cwd"  # no stray .env is read
    cwd.mkdir()
    log_file = tmp_path / "jukebot-run.log"
    command = [sys.executable, "-m", "jukebot", "run", "--sync-guild", str(fake_discord.default_guild.id)]
    env = jukebot_environment(fake_discord, sqlite_url, JUKEBOT_GPUS="none")
    run = JukebotRun(start_jukebot_run(command, env, cwd, log_file), log_file)
    try:
        yield run
    finally:
        if run.process.poll() is None:
            os.killpg(run.pgid, signal.SIGKILL)
            run.process.wait()
        print(f"---- jukebot run log\n{run.log()[-6000:]}")


@pytest.mark.parametrize(
    ("how", "sample_2_posted"),
    [("SIGTERM", False), ("SIGINT group", True), ("SIGHUP group", False)],
    ids=[
        "sigterm-before-discord-got-sample-2",
        "ctrl-c-before-the-bot-heard-back",
        "hangup-before-discord-got-sample-2",
    ],
)
async def test_a_bot_stopped_mid_post_hands_samples_2_and_3_to_the_next_bot_at_once(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_url: str,
    jukebot_run: JukebotRun,
    how: str,
    sample_2_posted: bool,
) -> None:
    fake = fake_discord
    engine = create_engine(sqlite_url)
    try:
        store = JobStore(engine)
        worker = PlayedWorker(store)
        await fake.wait_for(
            lambda: "jukebox" in fake.synced_commands(fake.default_guild), timeout_s=START_TIMEOUT_S
        )
        await fake.wait_for(lambda: fake.live_sessions, timeout_s=START_TIMEOUT_S)
        record = await fake.invoke_command(
            "jukebox", {"artist": "queen", "genre": "pop", "samples": 3, "seed": 1}, user=fake.user("alice")
        )
        await fake.wait_for(lambda: record.original is not None and not record.original.loading)
        job = await worker.claim()
        progress = await fake.wait_for(when(lambda: progress_message(fake, job.id)))

        # Only the samples are posted to the channel from here on: let sample 1 through, hold sample 2.
        held = fake.hold(*SAMPLE_POSTS, after=1, handled=sample_2_posted)
        sample_ids = await worker.complete(job, n=3, full=False)
        await fake.wait_for(lambda: held.arrived, timeout_s=START_TIMEOUT_S)
        first = sample_message(fake, sample_ids[0])
        assert first is not None
        assert (sample_message(fake, sample_ids[1]) is not None) is sample_2_posted
        posting = await store.get_job(job.id)
        claim_expires_at = posting.results_posting_expires_at
        assert posting.results_posting_owner is not None and claim_expires_at is not None

        jukebot_run.stop_as(how)
        assert await jukebot_run.exit_code() == 0, "the bot did not stop gracefully"
        held.drop()  # its sender is gone: not done, or its answer is lost
        await fake.wait_for(lambda: not fake.live_sessions)
        log = jukebot_run.log()
        assert "stopping: closing the Discord connection" in log
        assert "Traceback" not in log and "KeyboardInterrupt" not in log

        # The claim was given back as the bot stopped, not left to expire.
        stopped = await store.get_job(job.id)
        assert stopped.results_posted_at is None and not progress.content.endswith(DONE)
        assert stopped.results_posting_owner is None, "the stopped bot kept its claim on the results"
        assert [info.message_id for info in await store.samples_for_job(job.id)] == [first.id, None, None]

        # The next bot, at a time when the stopped bot's claim would still hold (by the store's clock).
        still_claimed = FakeClock(utcnow())
        assert still_claimed.now < claim_expires_at
        assert (claim_expires_at - still_claimed.now).total_seconds() <= RESULTS_LEASE_S
        second = await bot_runner.start(make_bot(fake, JobStore(engine, clock=still_claimed)))
        relay_of(second).poke()
        await fake.wait_for(lambda: progress.content.endswith(DONE))
        await relay_of(second).run_pass()  # waits out the pass that posted them

        await assert_posted_once(fake, store, job.id, sample_ids, first, progress)
        done = await store.get_job(job.id)
        assert done.results_posted_at == still_claimed.now < claim_expires_at
        assert done.results_posting_owner is None
        assert fake.unknown_requests == []
    finally:
        await engine.dispose()
