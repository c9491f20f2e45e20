"""Results that cannot go out never hold up the others, and results nobody announced still go out.

The real bot against the fake Discord; the test plays the worker through the real store and drives the
relay's passes itself (`run_pass`), so each check sees a whole pass.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from datetime import timedelta

import discord
import pytest

from bot.bot import JukeBot
from bot.relay import ProgressRelay, sample_nonce
from storage.engine import create_engine
from storage.models import JobStatus, utcnow
from storage.records import ClaimedJob
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import MAX_NONCE, FakeDiscord, FakeMessage
from tests.bot.harness import (
    PlayedWorker,
    bot_messages,
    make_bot,
    progress_message,
    relay_of,
    reply_of,
    sample_message,
    when,
)
from tests.conftest import FakeClock
from tests.waiting import wait_until


def _job_messages(fake: FakeDiscord, job_id: int, channel: str = "general") -> list[FakeMessage]:
    return [m for m in bot_messages(fake, channel) if m.content.startswith(f"**Job #{job_id}**")]


async def _queued_and_claimed(
    fake: FakeDiscord, worker: PlayedWorker, user: str, channel: str, seed: int
) -> ClaimedJob:
    record = await fake.invoke_command(
        "jukebox",
        {"artist": "queen", "genre": "pop", "samples": 1, "seed": seed},
        user=fake.user(user),
        channel=fake.channel(channel),
    )
    await fake.wait_for(lambda: record.original is not None and not record.original.loading)
    job = await worker.claim()
    await fake.wait_for(when(lambda: progress_message(fake, job.id, channel)))
    return job


async def test_results_for_a_deleted_channel_are_given_up_once_and_do_not_block_later_results(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    relay = relay_of(bot)
    relay.finished_batch = 2  # results per server per pass: as many as the jobs that cannot go out
    worker = PlayedWorker(store)
    lost = [
        await _queued_and_claimed(fake, worker, "alice", "music", seed=1),
        await _queued_and_claimed(fake, worker, "bob", "music", seed=2),
    ]
    later = await _queued_and_claimed(fake, worker, "mod", "general", seed=3)

    # #music is deleted; its jobs finish first, then the job in #general.
    music = fake.channel("music")
    fake.default_guild.channels.remove(music)
    del fake.channels[music.id]
    for job in lost:
        await worker.complete(job, n=1, full=False)
    (later_sample,) = await worker.complete(later, n=1, full=False)

    caplog.set_level(logging.WARNING, logger="bot.relay")
    await relay.run_pass()  # the two jobs of #music: Discord answers 404 Unknown Channel
    await relay.run_pass()
    assert sample_message(fake, later_sample) is not None
    done = progress_message(fake, later.id)
    assert done is not None and done.content.endswith("✅ Done: 1 sample below.")
    for job in lost:
        assert (await store.get_job(job.id)).results_posted_at is not None
        # its sample stays stored, for `/sample` to re-send
        assert [info.message_id for info in await store.samples_for_job(job.id)] == [None]

    # One warning per job given up, naming the job, the channel and Discord's answer; no traceback.
    relay_records = [r for r in caplog.records if r.name == "bot.relay"]
    assert [r.levelno for r in relay_records] == [logging.WARNING, logging.WARNING]
    for record, job in zip(relay_records, lost, strict=True):
        message = record.getMessage()
        assert f"job #{job.id}:" in message and str(music.id) in message and "10003" in message, message
        assert record.exc_info is None

    # Never tried again.
    tried = len(fake.calls())
    await relay.run_pass()
    assert not [call for call in fake.calls()[tried:] if f"/channels/{music.id}/" in call.path]


@dataclasses.dataclass
class _TwoFinished:
    clock: FakeClock
    store: JobStore
    relay: ProgressRelay
    first: tuple[ClaimedJob, int]  # (job, its sample), finished first
    second: tuple[ClaimedJob, int]


async def _two_finished_jobs(
    fake: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, first_channel: str, second_channel: str
) -> _TwoFinished:
    """A started bot on a store with a clock, and two members' jobs (alice's in `first_channel`, then
    bob's), each finished with one sample whose results are not posted yet."""
    clock = FakeClock(utcnow())
    store = JobStore(sqlite_store.engine, clock=clock)
    bot = await bot_runner.start(make_bot(fake, store))
    worker = PlayedWorker(store)
    first = await _queued_and_claimed(fake, worker, "alice", first_channel, seed=1)
    second = await _queued_and_claimed(fake, worker, "bob", second_channel, seed=2)
    (first_sample,) = await worker.complete(first, n=1, full=False)
    clock.advance(1)
    (second_sample,) = await worker.complete(second, n=1, full=False)
    return _TwoFinished(clock, store, relay_of(bot), (first, first_sample), (second, second_sample))


async def test_results_that_keep_failing_wait_between_tries_and_let_the_next_results_through(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake = fake_discord
    two = await _two_finished_jobs(fake, bot_runner, sqlite_store, "general", "general")
    clock, store, relay = two.clock, two.store, two.relay
    relay.finished_batch = 1
    (failing, failing_sample), (_, later_sample) = two.first, two.second

    # Discord fails the first job's upload twice (503: discord.py does not retry it itself).
    fake.fail_next("POST", "/channels/{channel_id}/messages", status=503, times=2)
    await relay.run_pass()  # fails; tried again at the next pass
    await relay.run_pass()  # fails again: it waits a while now
    assert [r.status for r in fake.rejections] == [503, 503]
    await relay.run_pass()  # ... and the job behind it goes out meanwhile
    assert sample_message(fake, later_sample) is not None
    assert sample_message(fake, failing_sample) is None
    assert (await store.get_job(failing.id)).results_posted_at is None

    # Once its wait is over, it goes out, once.
    clock.advance(relay.poll_interval_s * 2 + 1)
    await relay.run_pass()
    assert sample_message(fake, failing_sample) is not None
    finished = progress_message(fake, failing.id)
    assert finished is not None and finished.content.endswith("✅ Done: 1 sample below.")
    assert (await store.get_job(failing.id)).results_posted_at is not None
    await relay.run_pass()
    assert len([m for m in bot_messages(fake) if f"**Sample #{failing_sample}**" in m.content]) == 1


async def test_a_job_that_finished_while_no_bot_had_announced_it_gets_its_results_in_a_fresh_message(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """The bot committed the job, was killed before posting its progress message, and the job ran
    and finished while no bot was up: the next bot posts its results."""
    fake, store = fake_discord, sqlite_store
    job_id = await store.enqueue(  # what the killed bot had written
        kind="generate",
        model="1b_lyrics",
        params={"artist": "queen", "genres": ["pop"], "seconds": 10, "n_samples": 1, "seed": 1},
        channel_id=fake.channel("general").id,
        user_id=fake.user("alice").id,
        guild_id=fake.default_guild.id,
    )
    worker = PlayedWorker(store)
    job = await worker.claim()
    assert job.id == job_id
    (sample_id,) = await worker.complete(job, n=1, full=False)

    bot: JukeBot = await bot_runner.start(make_bot(fake, store))
    await relay_of(bot).run_pass()
    posted = sample_message(fake, sample_id)
    assert posted is not None and f"<@{fake.user('alice').id}>" in posted.content
    (final,) = _job_messages(fake, job_id)
    assert final.content.endswith("✅ Done: 1 sample below.")
    assert (await store.get_job(job_id)).results_posted_at is not None

    # An announcement that comes only now (another bot's, late) posts no progress message after it.
    await relay_of(bot).announce(job_id)
    await relay_of(bot).run_pass()
    assert _job_messages(fake, job_id) == [final]
    assert len([m for m in bot_messages(fake) if f"**Sample #{sample_id}**" in m.content]) == 1


async def test_a_retry_waits_in_the_store_and_a_lost_permission_gives_up_the_results(
    fake_discord: FakeDiscord, bot_runner: BotRunner, db_url: str
) -> None:
    """The claim, the wait before a retry and the give-up are the store's: on both databases."""
    fake = fake_discord
    engine = create_engine(db_url)
    try:
        clock = FakeClock(utcnow())
        store = JobStore(engine, clock=clock)
        bot = await bot_runner.start(make_bot(fake, store))
        relay = relay_of(bot)
        worker = PlayedWorker(store)
        job = await _queued_and_claimed(fake, worker, "alice", "general", seed=1)
        (sample_id,) = await worker.complete(job, n=1, full=False)
        fake.fail_next("POST", "/channels/{channel_id}/messages", status=503, times=2)
        await relay.run_pass()
        await relay.run_pass()
        waiting = await store.get_job(job.id)
        assert waiting.results_posting_owner is None and waiting.results_posting_expires_at is not None
        assert waiting.results_posting_expires_at > clock.now
        assert await store.finished_jobs_unposted() == []
        assert await store.claim_results_posting(job.id, "another-bot", 30.0) is None
        clock.advance(relay.poll_interval_s * 2 + 1)
        fake.channel("general").bot_denied = discord.Permissions(attach_files=True).value  # a moderator
        await relay.run_pass()
        assert (await store.get_job(job.id)).results_posted_at is not None
        assert sample_message(fake, sample_id) is None
        assert [(r.status, (r.error or {}).get("code")) for r in fake.rejections][-1] == (403, 50013)
    finally:
        await engine.dispose()


async def test_progress_in_a_deleted_channel_is_given_up_with_one_warning_until_much_later(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A running job whose channel is gone: not a traceback and a refused request every few seconds
    for the hours it samples."""
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    relay = relay_of(bot)
    worker = PlayedWorker(store)
    job = await _queued_and_claimed(fake, worker, "alice", "music", seed=1)
    music = fake.channel("music")
    fake.default_guild.channels.remove(music)
    del fake.channels[music.id]

    caplog.set_level(logging.WARNING, logger="bot.relay")
    for window in range(1, 4):  # the job samples on; each pass has news to show
        await worker.progress(job.id, window=window, of=4)
        tried = len(fake.calls())
        await relay.run_pass()
        to_music = [call for call in fake.calls()[tried:] if f"/channels/{music.id}/" in call.path]
        assert len(to_music) == (2 if window == 1 else 0), to_music  # the edit, then a fresh message
    relay_records = [r for r in caplog.records if r.name == "bot.relay"]
    assert [(r.levelno, r.exc_info) for r in relay_records] == [(logging.WARNING, None)]
    assert f"job #{job.id}: cannot show its progress in channel {music.id}" in relay_records[0].getMessage()


async def test_the_jobs_of_a_server_the_bot_left_are_cancelled(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """Removed from a server, the bot could post nothing there: its jobs must not use GPU time."""
    fake, store = fake_discord, sqlite_store
    await bot_runner.start(make_bot(fake, store))
    worker = PlayedWorker(store)
    running = await _queued_and_claimed(fake, worker, "alice", "general", seed=1)
    await reply_of(fake, await fake.invoke_command("jukebox", {"samples": 1}, user=fake.user("bob")))
    await fake.dispatch("GUILD_DELETE", {"id": str(fake.default_guild.id)})

    async def stopped() -> bool:
        statuses = [(await store.get_job(job_id)).status for job_id in (running.id, running.id + 1)]
        return statuses == [JobStatus.CANCELLING, JobStatus.CANCELLED]

    await wait_until(stopped, 10.0, "the jobs of the server the bot left to stop")
    assert await store.claim(worker.worker_id, ["5b_lyrics"], 60) is None


@dataclasses.dataclass
class _PartWay:
    bot: JukeBot
    relay: ProgressRelay
    store: JobStore
    clock: FakeClock
    job: ClaimedJob
    sample_id: int
    first: FakeMessage  # the sample's first message, which went out


async def _a_job_under_a_20_000_byte_limit(
    fake: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> tuple[JukeBot, ProgressRelay, JobStore, FakeClock, PlayedWorker, ClaimedJob]:
    """A bot in a server whose upload limit is 20,000 bytes, and alice's job, claimed by a worker."""
    fake.default_guild.attachment_size_limit = 20_000
    clock = FakeClock(utcnow())
    store = JobStore(sqlite_store.engine, clock=clock)
    bot = await bot_runner.start(make_bot(fake, store))
    worker = PlayedWorker(store)
    job = await _queued_and_claimed(fake, worker, "alice", "general", seed=1)
    return bot, relay_of(bot), store, clock, worker, job


async def _sample_part_way(
    fake: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, *, failures: int
) -> _PartWay:
    """A 12 s sample split into several messages under a 20,000-byte limit, after one pass: part 1
    went out, part 2 failed (503: discord.py does not retry it), and fails `failures` tries in all."""
    bot, relay, store, clock, worker, job = await _a_job_under_a_20_000_byte_limit(
        fake, bot_runner, sqlite_store
    )
    (sample_id,) = await worker.complete(job, n=1, full=False, seconds=12.0)
    fake.fail_next("POST", "/channels/{channel_id}/messages", status=503, after=1, times=failures)
    await relay.run_pass()
    first = sample_message(fake, sample_id)
    assert first is not None
    return _PartWay(bot, relay, store, clock, job, sample_id, first)


async def test_a_sample_in_parts_whose_later_part_keeps_failing_never_posts_its_first_part_twice(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake = fake_discord
    # Part 2 fails at this try and the next.
    part_way = await _sample_part_way(fake, bot_runner, sqlite_store, failures=2)
    relay, store, clock = part_way.relay, part_way.store, part_way.clock
    job, sample_id, first = part_way.job, part_way.sample_id, part_way.first
    info = await store.get_sample_info(sample_id)
    assert (info.message_id, info.message_parts_sent) == (first.id, 1) and not info.posted
    await relay.run_pass()
    assert [r.status for r in fake.rejections] == [503, 503]

    # The next try comes after Discord stopped matching the nonces (minutes): only the rest goes out.
    fake.let_nonces_expire()
    clock.advance(relay.poll_interval_s * 2 + 1)
    await relay.run_pass()
    firsts = [m for m in bot_messages(fake) if f"**Sample #{sample_id}**" in m.content]
    assert firsts == [first]
    names = [a.filename for m in bot_messages(fake) for a in m.attachments if "_part" in a.filename]
    total = info.message_parts_total
    assert total is not None and total >= 2
    stems = [name.rsplit(".", 1)[0] for name in names]
    assert stems == [f"jukebot_sample_{sample_id}_part{i}of{total}" for i in range(1, total + 1)]
    info = await store.get_sample_info(sample_id)
    assert info.posted and info.message_id == first.id and info.message_parts_total is None
    done = progress_message(fake, job.id)
    assert done is not None and done.content.endswith("✅ Done: 1 sample below.")


async def test_a_long_rate_limit_in_one_channel_does_not_hold_the_results_of_another(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = fake_discord
    two = await _two_finished_jobs(fake, bot_runner, sqlite_store, "music", "general")
    clock, store, relay = two.clock, two.store, two.relay
    (limited, limited_sample), (other, other_sample) = two.first, two.second

    # Discord asks the bot to wait two minutes before posting in #music again.
    fake.fail_next("POST", "/channels/{channel_id}/messages", status=429, retry_after=120.0)
    caplog.set_level(logging.WARNING, logger="bot.relay")
    passing = asyncio.create_task(relay.run_pass())
    # Bounded waits for the outcome (a loaded machine), far below the two minutes asked for.
    await fake.wait_for(when(lambda: sample_message(fake, other_sample)), timeout_s=30)
    await asyncio.wait_for(passing, timeout=30)
    done = progress_message(fake, other.id)
    assert done is not None and done.content.endswith("✅ Done: 1 sample below.")
    assert [r.status for r in fake.rejections] == [429]

    # #music's results wait for the time Discord asked for, in the store (any bot honours it).
    assert sample_message(fake, limited_sample, "music") is None
    job = await store.get_job(limited.id)
    assert job.results_posted_at is None and job.results_posting_owner is None
    assert job.results_posting_expires_at == clock.now + timedelta(seconds=120)
    (warning,) = [r for r in caplog.records if r.name == "bot.relay"]
    assert f"job #{limited.id}:" in warning.getMessage() and "120 s" in warning.getMessage()
    assert warning.levelno == logging.WARNING and warning.exc_info is None


async def test_a_long_rate_limit_on_one_progress_message_does_not_hold_the_others(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    relay = relay_of(bot)
    relay.min_edit_interval_s = 0.0
    worker = PlayedWorker(store)
    limited = await _queued_and_claimed(fake, worker, "alice", "music", seed=1)
    other = await _queued_and_claimed(fake, worker, "bob", "general", seed=2)
    await relay.run_pass()
    await worker.progress(limited.id, window=1, of=4)
    await worker.progress(other.id, window=1, of=4)

    fake.fail_next("PATCH", "/channels/{channel_id}/messages/{message_id}", status=429, retry_after=120.0)
    caplog.set_level(logging.WARNING, logger="bot.relay")
    # A bounded wait for the pass (a loaded machine), far below the two minutes asked for.
    await asyncio.wait_for(relay.run_pass(), timeout=30)
    assert [r.status for r in fake.rejections] == [429]
    edited = progress_message(fake, other.id)
    assert edited is not None and "1/4" in edited.content, edited
    assert [r for r in caplog.records if r.name == "bot.relay"] == []  # discord.py logs the 429 once


@pytest.mark.parametrize("new_limit", [10 * 1024 * 1024, 12_000], ids=["limit-grew", "limit-shrank"])
async def test_a_sample_in_parts_whose_server_limit_changed_between_tries_still_goes_out_whole(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, new_limit: int
) -> None:
    """Part 1 went out, part 2 failed; the next try comes within Discord's nonce window, under another
    upload limit (a boost gained or lost; or, after a restart, the limit the bot had from a command is
    gone). A bigger limit: the rest of the same split follows. A smaller one: the split that was sent
    no longer fits, so the sample goes out again split anew, in messages of their own."""
    fake = fake_discord
    part_way = await _sample_part_way(fake, bot_runner, sqlite_store, failures=1)
    bot, relay, store = part_way.bot, part_way.relay, part_way.store
    job, sample_id, first = part_way.job, part_way.sample_id, part_way.first
    parts = (await store.get_sample_info(sample_id)).message_parts
    assert parts is not None and (parts.sent, parts.upload_limit) == (1, 20_000) and parts.total >= 2

    fake.default_guild.attachment_size_limit = new_limit
    assert job.guild_id is not None
    bot._upload_limits[job.guild_id] = new_limit  # as a member's next command tells the bot
    await relay.run_pass()

    info = await store.get_sample_info(sample_id)
    assert info.posted
    messages = [m for m in bot_messages(fake) if not m.content.startswith("**Job #")]
    stems = [a.filename.rsplit(".", 1)[0] for m in messages for a in m.attachments if "_part" in a.filename]
    old_split = [f"jukebot_sample_{sample_id}_part{i}of{parts.total}" for i in range(1, parts.total + 1)]
    if new_limit > 20_000:
        assert stems == old_split and info.message_id == first.id
        assert [m for m in messages if f"**Sample #{sample_id}**" in m.content] == [first]
    else:
        total = len(stems) - 1
        assert total > parts.total and stems[0] == old_split[0]
        new_split = [f"jukebot_sample_{sample_id}_part{i}of{total}" for i in range(1, total + 1)]
        assert stems[1:] == new_split and info.message_id not in (None, first.id)
        assert all(sum(a.size for a in m.attachments) <= new_limit for m in messages[1:])
    done = progress_message(fake, job.id)
    assert done is not None and done.content.endswith("✅ Done: 1 sample below.")


async def test_a_sample_refused_as_too_large_after_the_server_limit_shrank_goes_out_split_anew(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """A member's command told the bot the server's upload limit; the server lost boosts since (its
    limit shrank) and nobody ran a command after. Discord refuses the sample's file as too large
    (40005): the relay took that for a hiccup and sent the same file at every try, waiting longer
    each time, for ever. It now keeps under the base limit every server allows and splits the sample
    anew at once; a refusal of a file within that base is an ordinary failure (not the size)."""
    fake = fake_discord
    bot, relay, store, _clock, worker, job = await _a_job_under_a_20_000_byte_limit(
        fake, bot_runner, sqlite_store
    )
    assert job.guild_id is not None
    bot.base_upload_limit = 20_000  # what every server allows: this fake one's 20,000 bytes
    bot._upload_limits[job.guild_id] = 1_000_000  # as a member's command said while the server was boosted
    (sample_id,) = await worker.complete(job, n=1, full=False, seconds=12.0)
    await relay.run_pass()
    assert [r.status for r in fake.rejections] == [413]
    assert bot.upload_limit(job.guild_id) == 20_000
    await relay.run_pass()  # at once, split anew
    assert (await store.get_sample_info(sample_id)).posted
    assert [r.status for r in fake.rejections] == [413]
    sent = [m for m in bot_messages(fake) if not m.content.startswith("**Job #")]
    assert sent and all(sum(a.size for a in m.attachments) <= 20_000 for m in sent)
    assert len([m for m in sent if f"**Sample #{sample_id}**" in m.content]) == 1
    done = progress_message(fake, job.id)
    assert done is not None and done.content.endswith("✅ Done: 1 sample below.")

    # Another sample, its part within the base refused as too large (some other cause): no smaller
    # split would help, so the limit stays and the try comes later, as for any failure.
    later = await _queued_and_claimed(fake, worker, "bob", "general", seed=2)
    (other,) = await worker.complete(later, n=1, full=False, seconds=12.0)
    fake.fail_next("POST", "/channels/{channel_id}/messages", status=413, code=40005)
    await relay.run_pass()
    assert [r.status for r in fake.rejections] == [413, 413]
    assert bot.upload_limit(job.guild_id) == 20_000 and not (await store.get_sample_info(other)).posted
    assert relay._failures.get(later.id) == 1


def test_a_sample_nonce_fits_discords_limit_for_the_largest_ids_parts_and_limits() -> None:
    nonce = sample_nonce(2**31 - 1, 999, 2**32 - 1)
    assert len(nonce) <= MAX_NONCE and sample_nonce(1, 0, 20_000) != sample_nonce(1, 0, 12_000)
