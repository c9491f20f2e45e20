"""A real bot process killed while posting a job's results: the next bot posts the rest, exactly once.

The bot posts sample 1 of 3; the fake Discord holds its upload of sample 2 (a barrier, no timing):
before Discord saw it, or after Discord posted it but before the bot heard back (so the bot could
not record it). The test kills the process there with SIGKILL (no cleanup runs), and a new bot
starts once the dead bot's claim on the results has expired (its store's clock is moved past the
claim, no waiting).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.relay import RESULTS_LEASE_S
from storage.engine import create_engine
from storage.models import utcnow
from storage.records import ClaimedJob
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord, FakeMessage
from tests.bot.harness import (
    PlayedWorker,
    assert_posted_once,
    bot_messages,
    make_bot,
    progress_message,
    relay_of,
    sample_message,
    sample_posts,
    when,
)
from tests.conftest import FakeClock
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 60.0  # a fresh interpreter importing discord.py, on two shared cores
DONE = "✅ Done: 3 samples below."


def start_bot_process(fake: FakeDiscord, db_url: str, log_file: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tests.bot.bot_process", "--api-base", fake.api_base]
    command += ["--gateway", fake.gateway_url, "--token", fake.token, "--database-url", db_url]
    command += ["--guild-id", str(fake.default_guild.id)]
    env = dict(os.environ) | {"PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with open(log_file, "ab") as output:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT)


async def _queued_and_claimed(
    fake: FakeDiscord, worker: PlayedWorker, *, samples: int
) -> tuple[ClaimedJob, FakeMessage]:
    """Once the bot process is up: a member's job, claimed by `worker`, and its progress message."""
    await fake.wait_for(
        lambda: "jukebox" in fake.synced_commands(fake.default_guild), timeout_s=START_TIMEOUT_S
    )
    await fake.wait_for(lambda: fake.live_sessions, timeout_s=START_TIMEOUT_S)
    record = await fake.invoke_command(
        "jukebox", {"artist": "queen", "genre": "pop", "samples": samples, "seed": 1}, user=fake.user("alice")
    )
    await fake.wait_for(lambda: record.original is not None and not record.original.loading)
    job = await worker.claim()
    return job, await fake.wait_for(when(lambda: progress_message(fake, job.id)))


async def _kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL: no cleanup runs in the bot."""
    process.send_signal(signal.SIGKILL)
    assert await asyncio.to_thread(process.wait, 30) == -signal.SIGKILL


@contextlib.asynccontextmanager
async def bot_process(
    fake: FakeDiscord, db_url: str, tmp_path: Path
) -> AsyncIterator[tuple[subprocess.Popen[bytes], AsyncEngine]]:
    """A bot in a process of its own on `db_url`, and an engine on that database for the test; its log
    printed at the end (pytest shows it when the test fails)."""
    engine = create_engine(db_url)
    log_file = tmp_path / "bot.log"
    process = start_bot_process(fake, db_url, log_file)
    try:
        yield process, engine
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        await engine.dispose()
        print(f"---- bot process log\n{log_file.read_text(errors='replace')[-6000:]}")


@pytest.mark.parametrize(
    ("sample_2_posted", "nonce_forgotten"),
    [(False, False), (True, False), (True, True)],
    ids=["before-discord-got-sample-2", "before-the-bot-heard-back", "before-the-bot-heard-back-minutes-ago"],
)
async def test_a_bot_killed_after_sample_1_of_3_leaves_samples_2_and_3_to_the_next_bot(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    db_url: str,
    tmp_path: Path,
    sample_2_posted: bool,
    nonce_forgotten: bool,
) -> None:
    """Minutes later Discord no longer matches the nonce: the next bot finds sample 2's message in the
    channel (it took over a claim that ran out, so its predecessor may have sent more than it recorded)."""
    fake = fake_discord
    async with bot_process(fake, db_url, tmp_path) as (process, engine):
        store = JobStore(engine)
        worker = PlayedWorker(store)
        job, progress = await _queued_and_claimed(fake, worker, samples=3)

        # Only the samples are posted to the channel from here on: let sample 1 through, hold sample 2.
        held = fake.hold("POST", "/channels/{channel_id}/messages", after=1, handled=sample_2_posted)
        sample_ids = await worker.complete(job, n=3, full=False)
        await fake.wait_for(lambda: held.arrived, timeout_s=START_TIMEOUT_S)
        first = sample_message(fake, sample_ids[0])
        assert first is not None
        assert (sample_message(fake, sample_ids[1]) is not None) is sample_2_posted
        # Sample 1's message was recorded before sample 2 went out.
        assert [info.message_id for info in await store.samples_for_job(job.id)] == [first.id, None, None]

        await _kill(process)
        held.drop()  # its sender is dead: not done, or its answer is lost
        await fake.wait_for(lambda: not fake.live_sessions)
        assert not progress.content.endswith(DONE)
        assert (await store.get_job(job.id)).results_posted_at is None
        if nonce_forgotten:
            fake.let_nonces_expire()

        # A new bot, once the dead bot's claim has run out.
        later = FakeClock(utcnow() + timedelta(seconds=RESULTS_LEASE_S + 1))
        second = await bot_runner.start(make_bot(fake, JobStore(engine, clock=later)))
        relay_of(second).poke()
        await fake.wait_for(lambda: progress.content.endswith(DONE))
        await relay_of(second).run_pass()  # waits out the pass that posted them

        # Sample 2 sent again with its nonce, Discord answering with the message it already posted; or,
        # the nonce forgotten, found in the channel's history and recorded without sending it again.
        await assert_posted_once(fake, store, job.id, sample_ids, first, progress)
        assert (await store.get_job(job.id)).results_posted_at is not None
        dropped = [] if sample_2_posted else [("POST /channels/{channel_id}/messages", 503)]
        assert [(r.route, r.status) for r in fake.rejections] == dropped
        assert fake.unknown_requests == []


async def test_an_upload_longer_than_the_lease_keeps_the_claim_on_the_results(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake = fake_discord
    clock = FakeClock(utcnow())
    store = JobStore(sqlite_store.engine, clock=clock)
    bot = await bot_runner.start(make_bot(fake, store))
    relay_of(bot).results_lease_s = 0.3  # renewed every 0.1 s
    record = await fake.invoke_command(
        "jukebox", {"artist": "queen", "genre": "pop", "samples": 1, "seed": 1}, user=fake.user("alice")
    )
    await fake.wait_for(lambda: record.original is not None and not record.original.loading)
    worker = PlayedWorker(store)
    job = await worker.claim()
    progress = await fake.wait_for(when(lambda: progress_message(fake, job.id)))

    held = fake.hold("POST", "/channels/{channel_id}/messages")  # the upload of the only sample
    (sample_id,) = await worker.complete(job, n=1, full=False)
    relay_of(bot).poke()
    await fake.wait_for(lambda: held.arrived)
    clock.advance(60)  # the upload goes on far past the lease

    async def renewed() -> bool:
        expires = (await store.get_job(job.id)).results_posting_expires_at
        return expires == clock.now + timedelta(seconds=0.3)

    await wait_until(renewed, 10, "the claim to be renewed during the upload")
    assert await store.claim_results_posting(job.id, "another-bot", RESULTS_LEASE_S) is None

    held.release()
    await fake.wait_for(lambda: progress.content.endswith("✅ Done: 1 sample below."))
    await relay_of(bot).run_pass()
    assert len(sample_posts(fake, sample_id)) == 1
    assert (await store.get_job(job.id)).results_posted_at == clock.now


@pytest.mark.parametrize(
    "part_2_posted", [False, True], ids=["before-discord-got-part-2", "before-the-bot-heard-back"]
)
async def test_a_bot_killed_between_the_parts_of_a_sample_leaves_only_the_later_parts_to_the_next_bot(
    fake_discord: FakeDiscord, bot_runner: BotRunner, db_url: str, tmp_path: Path, part_2_posted: bool
) -> None:
    """The new bot starts after Discord stopped matching nonces (minutes later): the store knows that
    part 1 went out, and the channel's history shows part 2 when Discord posted it."""
    fake = fake_discord
    fake.default_guild.attachment_size_limit = 20_000  # a 12 s sample goes out in several messages
    async with bot_process(fake, db_url, tmp_path) as (process, engine):
        store = JobStore(engine)
        worker = PlayedWorker(store)
        job, progress = await _queued_and_claimed(fake, worker, samples=1)

        held = fake.hold("POST", "/channels/{channel_id}/messages", after=1, handled=part_2_posted)  # part 2
        (sample_id,) = await worker.complete(job, n=1, full=False, seconds=12.0)
        await fake.wait_for(lambda: held.arrived, timeout_s=START_TIMEOUT_S)
        first = sample_message(fake, sample_id)
        assert first is not None
        info = await store.get_sample_info(sample_id)
        assert (info.message_id, info.message_parts_sent) == (first.id, 1)

        await _kill(process)
        held.drop()
        await fake.wait_for(lambda: not fake.live_sessions)
        fake.let_nonces_expire()

        later = FakeClock(utcnow() + timedelta(seconds=RESULTS_LEASE_S + 1))
        second = make_bot(fake, JobStore(engine, clock=later))
        # A real server's limit is never below what discord.py derives from its boost tier; this one is
        # (to split a short sample), so the new bot is told it, as a member's command would tell it.
        second._upload_limits[fake.default_guild.id] = fake.default_guild.attachment_size_limit
        await bot_runner.start(second)
        relay_of(second).poke()
        await fake.wait_for(lambda: progress.content.endswith("✅ Done: 1 sample below."), timeout_s=120)
        await relay_of(second).run_pass()

        assert sample_posts(fake, sample_id) == [first]
        messages = fake.channel_messages(fake.channel("general"))
        stems = [
            a.filename.rsplit(".", 1)[0] for m in messages for a in m.attachments if "_part" in a.filename
        ]
        total = info.message_parts_total
        assert total is not None and total >= 2
        assert stems == [f"jukebot_sample_{sample_id}_part{i}of{total}" for i in range(1, total + 1)]
        assert (await store.get_sample_info(sample_id)).posted


async def test_a_bot_killed_as_its_progress_message_went_out_leaves_the_next_bot_that_one(
    fake_discord: FakeDiscord, bot_runner: BotRunner, db_url: str, tmp_path: Path
) -> None:
    """Discord took the job's progress message; the bot was killed before it recorded it. Its nonce
    forgotten by the time the next bot starts (a deploy, a crash loop), that bot posted a second one,
    and the first stayed at "Queued" for good (review of the relay). It now finds that one."""
    fake = fake_discord
    async with bot_process(fake, db_url, tmp_path) as (process, engine):
        store = JobStore(engine)
        await fake.wait_for(
            lambda: "jukebox" in fake.synced_commands(fake.default_guild), timeout_s=START_TIMEOUT_S
        )
        await fake.wait_for(lambda: fake.live_sessions, timeout_s=START_TIMEOUT_S)
        held = fake.hold("POST", "/channels/{channel_id}/messages", handled=True)  # done, unanswered
        await fake.invoke_command(
            "jukebox", {"artist": "queen", "genre": "pop", "samples": 1, "seed": 1}, user=fake.user("alice")
        )
        await fake.wait_for(lambda: held.arrived, timeout_s=START_TIMEOUT_S)
        await _kill(process)
        held.drop()
        fake.let_nonces_expire()
        assert (await store.get_job(1)).progress_message_id is None
        (first,) = [m for m in bot_messages(fake) if m.content.startswith("**Job #1**")]

        bot = await bot_runner.start(make_bot(fake, store))
        relay = relay_of(bot)
        await relay.run_pass()
        worker = PlayedWorker(store)
        job = await worker.claim()
        await worker.progress(job.id, window=1, of=4)
        relay.min_edit_interval_s = 0.0
        await relay.run_pass()
        assert [m for m in bot_messages(fake) if m.content.startswith("**Job #1**")] == [first]
        assert (await store.get_job(1)).progress_message_id == first.id
        assert "1/4" in first.content or "%" in first.content, first.content  # it shows the progress
