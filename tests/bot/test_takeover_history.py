"""A bot that takes over a results claim that ran out reads the channel for what its predecessor sent
without a record (bot/relay.py `_EarlierMessages`): in a busy channel, after the upload limit changed
meanwhile, and when the bot that took over gives the claim back before it read the channel."""

from __future__ import annotations

from bot.relay import MAX_RETRY_DELAY_S, RESULTS_LEASE_S
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord, FakeMessage
from tests.bot.harness import PlayedWorker, make_bot, relay_of
from tests.bot.test_outage_mid_post import MESSAGES, _away_once_sent, _finished_job, _posts_of


async def test_in_a_busy_channel_the_predecessors_last_messages_are_found(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """1,200 members' messages since the job finished (more than the bot reads): the newest are read
    first, where the predecessor's are."""
    fake = fake_discord
    finished = await _finished_job(fake, bot_runner, sqlite_store)
    checks, clock, job = finished.checks, finished.clock, finished.job
    held = fake.hold("POST", MESSAGES, handled=True)  # sample 1's message: posted, the answer held
    sample_ids = await PlayedWorker(checks).complete(job, n=2, full=False)
    bob = fake.user("bob")
    for index in range(1200):
        chat = FakeMessage(fake._snowflake(), job.channel_id, job.guild_id, bob, content=f"chat {index}")
        chat.snapshot()
        fake.messages[chat.id] = chat
    await _away_once_sent(fake, finished, held)

    fake.let_nonces_expire()
    clock.advance(RESULTS_LEASE_S + 1)
    other = await bot_runner.start(make_bot(fake, JobStore(sqlite_store.engine, clock=clock)))
    await relay_of(other).run_pass()
    assert [len(_posts_of(fake, sample_id)) for sample_id in sample_ids] == [1, 1]


async def test_a_part_of_another_split_is_not_taken_for_this_splits_first(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """The predecessor split the sample in parts and sent part 1; the server's upload limit then grew
    (a boost) and the whole file fits one message: the sample goes out whole, not marked posted after
    part 1 of the old split."""
    fake = fake_discord
    fake.default_guild.attachment_size_limit = 20_000
    finished = await _finished_job(fake, bot_runner, sqlite_store)
    checks, clock, job = finished.checks, finished.clock, finished.job
    assert job.guild_id is not None
    finished.bot._upload_limits[job.guild_id] = 20_000  # as the member's command told the bot
    held = fake.hold("POST", MESSAGES, handled=True)  # part 1 of the sample
    (sample_id,) = await PlayedWorker(checks).complete(job, n=1, full=False, seconds=12.0)
    await _away_once_sent(fake, finished, held)

    fake.let_nonces_expire()
    clock.advance(RESULTS_LEASE_S + 1)
    fake.default_guild.attachment_size_limit = 1_000_000
    other = make_bot(fake, JobStore(sqlite_store.engine, clock=clock))
    other._upload_limits[job.guild_id] = 1_000_000
    await bot_runner.start(other)
    await relay_of(other).run_pass()
    files = [a.filename for m in _posts_of(fake, sample_id) for a in m.attachments]
    assert f"jukebot_sample_{sample_id}.mp3" in files or f"jukebot_sample_{sample_id}.ogg" in files, files
    assert (await checks.get_sample_info(sample_id)).posted


async def test_a_claim_given_back_before_the_channel_was_read_has_the_next_bot_read_it(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """Bot B took over from A (killed, or cut off) but could not read the channel (Discord answered 503)
    and gave the claim back; bot C, claiming next, reads it instead of posting sample 1 again."""
    fake = fake_discord
    finished = await _finished_job(fake, bot_runner, sqlite_store)
    checks, clock, job = finished.checks, finished.clock, finished.job
    held = fake.hold("POST", MESSAGES, handled=True)
    sample_ids = await PlayedWorker(checks).complete(job, n=2, full=False)
    await _away_once_sent(fake, finished, held)
    fake.let_nonces_expire()
    clock.advance(RESULTS_LEASE_S + 1)

    fake.fail_next("GET", MESSAGES, status=503, times=1000)  # while the second bot runs
    second = await bot_runner.start(make_bot(fake, JobStore(sqlite_store.engine, clock=clock)))
    await relay_of(second).run_pass()  # takes over, cannot read the channel, gives the claim back
    await bot_runner.stop(second)
    fake.clear_failures()
    assert (await checks.get_job(job.id)).results_posting_owner is not None  # "… (channel unread)"
    assert [len(_posts_of(fake, sample_id)) for sample_id in sample_ids] == [1, 0]
    clock.advance(MAX_RETRY_DELAY_S + 1)  # past the wait it asked for before the next try

    third = await bot_runner.start(make_bot(fake, JobStore(sqlite_store.engine, clock=clock)))
    await relay_of(third).run_pass()
    assert [len(_posts_of(fake, sample_id)) for sample_id in sample_ids] == [1, 1]
    assert (await checks.get_job(job.id)).results_posted_at is not None
