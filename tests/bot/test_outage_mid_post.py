"""The database goes away right after a sample's message went out, before the bot recorded it: once it
is back, the bot records that message instead of sending it again, however long the outage lasted.

Discord matches a message's nonce for a few minutes only (`fake.let_nonces_expire()`): after a longer
outage a message sent again is a second post, so only the bot's memory of what it sent prevents one.
The real bot runs against the fake Discord; the test drives the relay's passes (`run_pass`) and holds
Discord's answer to the upload (a barrier, no timing) while it takes the database away.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from bot.bot import JukeBot
from bot.relay import RESULTS_LEASE_S, ProgressRelay
from storage.models import utcnow
from storage.records import ClaimedJob
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord, FakeMessage, HeldRequest
from tests.bot.harness import (
    PlayedWorker,
    bot_messages,
    make_bot,
    progress_message,
    recorded_progress_message,
    relay_of,
    reply_of,
    when,
)
from tests.conftest import FakeClock
from tests.waiting import wait_until

MESSAGES = "/channels/{channel_id}/messages"


class StoreThatGoesAway(JobStore):
    """The bot's store, whose database cannot be reached while `away`: every call refused (a connection
    refused, as from a database that is down), counted in `refused`."""

    away = False
    refused = 0

    def _check(self) -> None:
        if self.away:
            self.refused += 1
            raise ConnectionRefusedError(111, "Connection refused")

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        self._check()
        async with super()._transaction() as connection:
            yield connection

    @contextlib.asynccontextmanager
    async def _reading(self) -> AsyncIterator[AsyncConnection]:
        self._check()
        async with super()._reading() as connection:
            yield connection


@dataclasses.dataclass
class _Finished:
    bot: JukeBot
    relay: ProgressRelay
    store: StoreThatGoesAway  # the bot's
    checks: JobStore  # the test's, on the same database, always reachable
    clock: FakeClock
    job: ClaimedJob
    progress: FakeMessage


async def _finished_job(fake: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore) -> _Finished:
    clock = FakeClock(utcnow())
    store = StoreThatGoesAway(sqlite_store.engine, clock=clock)
    checks = JobStore(sqlite_store.engine, clock=clock)
    bot = await bot_runner.start(make_bot(fake, store))
    record = await fake.invoke_command(
        "jukebox", {"artist": "queen", "genre": "pop", "samples": 2, "seed": 1}, user=fake.user("alice")
    )
    await fake.wait_for(lambda: record.original is not None and not record.original.loading)
    job = await PlayedWorker(checks).claim()
    progress = await fake.wait_for(when(lambda: progress_message(fake, job.id)))
    return _Finished(bot, relay_of(bot), store, checks, clock, job, progress)


async def _away_once_sent(fake: FakeDiscord, finished: _Finished, held: HeldRequest) -> None:
    """A pass posts the results; once Discord has done the held message, the database goes away before
    the bot hears back (it cannot record it)."""
    passing = asyncio.create_task(finished.relay.run_pass())
    await fake.wait_for(lambda: held.arrived)
    finished.store.away = True
    held.release()
    await passing  # the relay logs the failure; its later passes meet the outage until it ends
    assert finished.store.refused >= 1


def _posts_of(fake: FakeDiscord, sample_id: int) -> list[FakeMessage]:
    return [m for m in bot_messages(fake) if f"**Sample #{sample_id}**" in m.content]


@pytest.mark.parametrize("outage", ["short", "longer-than-the-nonce"])
async def test_a_sample_sent_just_before_the_database_went_away_is_recorded_not_sent_again(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, outage: str
) -> None:
    fake = fake_discord
    finished = await _finished_job(fake, bot_runner, sqlite_store)
    relay, store, checks, clock, job = (
        finished.relay,
        finished.store,
        finished.checks,
        finished.clock,
        finished.job,
    )
    held = fake.hold("POST", MESSAGES, handled=True)  # sample 1's message: posted, the answer held
    sample_ids = await PlayedWorker(checks).complete(job, n=2, full=False)
    await _away_once_sent(fake, finished, held)
    (first,) = _posts_of(fake, sample_ids[0])
    assert [info.message_id for info in await checks.samples_for_job(job.id)] == [None, None]
    assert _posts_of(fake, sample_ids[1]) == []

    if outage != "short":
        # Minutes: Discord forgot the nonce, and the claim on the results ran out meanwhile.
        fake.let_nonces_expire()
        clock.advance(RESULTS_LEASE_S + 1)
    store.away = False
    await relay.run_pass()

    assert [len(_posts_of(fake, sample_id)) for sample_id in sample_ids] == [1, 1]
    assert _posts_of(fake, sample_ids[0]) == [first]
    second = _posts_of(fake, sample_ids[1])[0]
    assert [info.message_id for info in await checks.samples_for_job(job.id)] == [first.id, second.id]
    assert (await checks.get_job(job.id)).results_posted_at is not None
    done = progress_message(fake, job.id)
    assert done is finished.progress and done.content.endswith("✅ Done: 2 samples below.")
    assert fake.rejections == [] and fake.unknown_requests == []


async def test_a_part_sent_just_before_the_database_went_away_is_recorded_not_sent_again(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """A sample split over several messages: part 1 went out, then the database went away for minutes.
    Only the later parts follow."""
    fake = fake_discord
    fake.default_guild.attachment_size_limit = 20_000  # a 12 s sample goes out in several messages
    finished = await _finished_job(fake, bot_runner, sqlite_store)
    relay, store, checks, clock, job = (
        finished.relay,
        finished.store,
        finished.checks,
        finished.clock,
        finished.job,
    )
    assert job.guild_id is not None
    finished.bot._upload_limits[job.guild_id] = 20_000  # as the member's command told the bot
    held = fake.hold("POST", MESSAGES, handled=True)  # part 1
    (sample_id,) = await PlayedWorker(checks).complete(job, n=1, full=False, seconds=12.0)
    await _away_once_sent(fake, finished, held)
    (first,) = _posts_of(fake, sample_id)
    assert (await checks.get_sample_info(sample_id)).message_id is None

    fake.let_nonces_expire()
    clock.advance(RESULTS_LEASE_S + 1)
    store.away = False
    await relay.run_pass()

    assert _posts_of(fake, sample_id) == [first]
    stems = [
        a.filename.rsplit(".", 1)[0]
        for m in bot_messages(fake)
        for a in m.attachments
        if "_part" in a.filename
    ]
    total = len(stems)
    assert total >= 2
    assert stems == [f"jukebot_sample_{sample_id}_part{i}of{total}" for i in range(1, total + 1)]
    info = await checks.get_sample_info(sample_id)
    assert info.posted and info.message_id == first.id
    done = progress_message(fake, job.id)
    assert done is not None and done.content.endswith("✅ Done: 1 sample below.")
    assert fake.rejections == [] and fake.unknown_requests == []


@pytest.mark.parametrize("goes_on", ["the-same-bot", "another-bot"])
async def test_results_all_sent_just_before_the_database_went_away_are_marked_posted_not_sent_again(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, goes_on: str
) -> None:
    """A job that ran while no bot did has no progress message: its final text goes out in a message of
    its own, the last one. The database goes away before the bot marks the results posted; the bot
    marks them once it is back, or another bot that took over the claim meanwhile finds the text in
    the channel (the final text has no nonce: it would go out again even within minutes)."""
    fake = fake_discord
    clock = FakeClock(utcnow())
    store = StoreThatGoesAway(sqlite_store.engine, clock=clock)
    checks = JobStore(sqlite_store.engine, clock=clock)
    job_id = await checks.enqueue(
        kind="generate",
        model="5b_lyrics",
        params={"artist": "queen", "genre": "pop", "lyrics": "", "seconds": 20, "samples": 1},
        guild_id=fake.default_guild.id,
        channel_id=fake.channel("general").id,
        user_id=fake.user("alice").id,
    )
    worker = PlayedWorker(checks)
    job = await worker.claim()
    assert job.id == job_id
    (sample_id,) = await worker.complete(job, n=1, full=False)
    held = fake.hold("POST", MESSAGES, after=1, handled=True)  # the final text, after the sample
    bot = await bot_runner.start(make_bot(fake, store))  # its first pass posts the results
    relay = relay_of(bot)
    await fake.wait_for(lambda: held.arrived)
    store.away = True
    held.release()
    with pytest.raises(OSError):
        await relay.run_pass()  # waits for the first pass to end; then meets the outage itself
    (final,) = [m for m in bot_messages(fake) if m.content.startswith(f"**Job #{job_id}**")]
    assert (await checks.get_job(job_id)).results_posted_at is None

    fake.let_nonces_expire()
    clock.advance(RESULTS_LEASE_S + 1)
    if goes_on == "another-bot":
        other = await bot_runner.start(make_bot(fake, JobStore(sqlite_store.engine, clock=clock)))
        await relay_of(other).run_pass()
        assert (await checks.get_job(job_id)).results_posted_at is not None
    store.away = False
    await relay.run_pass()

    assert [m for m in bot_messages(fake) if m.content.startswith(f"**Job #{job_id}**")] == [final]
    assert final.content.endswith("✅ Done: 1 sample below.")
    assert len(_posts_of(fake, sample_id)) == 1
    assert (await checks.get_job(job_id)).results_posted_at is not None
    assert fake.rejections == [] and fake.unknown_requests == []


async def test_a_progress_message_sent_just_before_the_database_went_away_is_recorded_not_sent_again(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """The job's progress message went out; the database went away before the bot recorded it. The
    next pass records it and goes on editing it, instead of posting a second one and leaving the
    first stuck on its old text."""
    fake = fake_discord
    clock = FakeClock(utcnow())
    store = StoreThatGoesAway(sqlite_store.engine, clock=clock)
    checks = JobStore(sqlite_store.engine, clock=clock)
    bot = await bot_runner.start(make_bot(fake, store))
    relay = relay_of(bot)
    held = fake.hold("POST", MESSAGES, handled=True)  # the progress message: posted, the answer held
    record = await fake.invoke_command("jukebox", {"artist": "queen", "samples": 1}, user=fake.user("alice"))
    await fake.wait_for(lambda: held.arrived)
    store.away = True
    held.release()

    async def the_record_was_refused() -> bool:
        return store.refused >= 1

    await wait_until(the_record_was_refused, what="the bot to fail recording its progress message")
    (first,) = [m for m in bot_messages(fake) if m.content.startswith("**Job #1**")]
    assert (await checks.get_job(1)).progress_message_id is None
    await fake.wait_for(lambda: record.original is not None and not record.original.loading)

    store.away = False
    await relay.run_pass()
    await relay.post_progress_message(1)  # as the command's announcement would, again
    job = await PlayedWorker(checks).claim()
    await relay.run_pass()

    assert [m for m in bot_messages(fake) if m.content.startswith("**Job #1**")] == [first]
    assert (await checks.get_job(job.id)).progress_message_id == first.id
    assert "Running" in first.content or "running" in first.content, first.content
    assert fake.rejections == [] and fake.unknown_requests == []


async def test_a_fresh_progress_message_recorded_after_the_outage_takes_the_old_one_away(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """In an archived thread the progress message cannot be edited: a fresh one goes out, and the old
    one is deleted once the fresh one is recorded. The database went away in between: the old one goes
    when the record is written, not left stuck on its old text beside the fresh one."""
    fake = fake_discord
    store = StoreThatGoesAway(sqlite_store.engine)
    checks = JobStore(sqlite_store.engine)
    thread = fake.add_thread(fake.channel("general"), "songs")
    bot = await bot_runner.start(make_bot(fake, store))
    relay = relay_of(bot)
    reply = await reply_of(fake, await fake.invoke_command("jukebox", {"samples": 1}, channel=thread))
    assert reply.startswith("Queued as job #1."), reply
    await recorded_progress_message(checks, 1)
    worker = PlayedWorker(checks)
    job = await worker.claim()
    first = progress_message(fake, job.id, "songs")
    assert first is not None

    thread.archived = True
    await worker.progress(job.id, window=1, of=10)
    held = fake.hold("POST", MESSAGES, handled=True)  # the fresh progress message
    passing = asyncio.create_task(relay.run_pass())
    await fake.wait_for(lambda: held.arrived)
    store.away = True
    held.release()
    with contextlib.suppress(ConnectionRefusedError):
        await passing
    fresh = next(
        m for m in bot_messages(fake, "songs") if m.content.startswith("**Job #1**") and m is not first
    )
    assert not first.deleted and (await checks.get_job(job.id)).progress_message_id == first.id

    store.away = False
    await relay.run_pass()
    assert first.deleted and progress_message(fake, job.id, "songs") is fresh
    assert (await checks.get_job(job.id)).progress_message_id == fresh.id
    await worker.progress(job.id, window=2, of=10)
    await relay.run_pass()
    assert "2/10" in fresh.content


async def test_a_bot_taking_over_a_claim_that_ran_out_in_an_outage_finds_what_was_sent_and_posts_the_rest(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """Bot A sent sample 1, then lost its database for minutes: its claim on the results ran out, and
    bot B, which reaches the database, took the results over before A could record that message. B
    reads the channel, records sample 1's message and sends only sample 2; A, back, sends nothing."""
    fake = fake_discord
    finished = await _finished_job(fake, bot_runner, sqlite_store)
    checks, clock, job = finished.checks, finished.clock, finished.job
    held = fake.hold("POST", MESSAGES, handled=True)  # sample 1's message: posted, the answer held
    sample_ids = await PlayedWorker(checks).complete(job, n=2, full=False)
    await _away_once_sent(fake, finished, held)
    (first,) = _posts_of(fake, sample_ids[0])
    assert fake.calls("GET", MESSAGES) == []  # a bot posting under its own claim reads no history

    fake.let_nonces_expire()
    clock.advance(RESULTS_LEASE_S + 1)
    other = await bot_runner.start(make_bot(fake, JobStore(sqlite_store.engine, clock=clock)))
    await relay_of(other).run_pass()
    assert len(fake.calls("GET", MESSAGES)) == 1
    second = _posts_of(fake, sample_ids[1])
    assert [len(_posts_of(fake, sample_id)) for sample_id in sample_ids] == [1, 1]
    assert [info.message_id for info in await checks.samples_for_job(job.id)] == [first.id, second[0].id]
    assert (await checks.get_job(job.id)).results_posted_at is not None

    finished.store.away = False
    await finished.relay.run_pass()  # A writes what it kept; its claim is gone: it posts nothing
    assert _posts_of(fake, sample_ids[0]) == [first] and _posts_of(fake, sample_ids[1]) == second
    assert [info.message_id for info in await checks.samples_for_job(job.id)] == [first.id, second[0].id]
    done = progress_message(fake, job.id)
    assert done is finished.progress and done.content.endswith("✅ Done: 2 samples below.")
    assert fake.rejections == [] and fake.unknown_requests == []
