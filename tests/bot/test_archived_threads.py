"""Jobs asked for in a thread that is archived or locked while they run.

Discord refuses edits in an archived thread (400, 50083) and un-archives it when a message is sent
there; in a locked thread the bot may not post at all (403, 160005). The real bot against the fake
Discord, which answers so; the test plays the worker and drives the relay's passes itself.
"""

from __future__ import annotations

import logging

import pytest

from storage.records import ClaimedJob
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeChannel, FakeDiscord, FakeMessage
from tests.bot.harness import (
    PlayedWorker,
    bot_messages,
    make_bot,
    progress_message,
    recorded_progress_message,
    relay_of,
    reply_of,
    sample_message,
)


async def _queued_in(fake: FakeDiscord, store: JobStore, thread: FakeChannel) -> ClaimedJob:
    reply = await reply_of(fake, await fake.invoke_command("jukebox", {"samples": 1}, channel=thread))
    assert reply.startswith("Queued as job #1."), reply
    await recorded_progress_message(store, 1)
    return await PlayedWorker(store).claim()


async def test_progress_in_an_archived_thread_goes_on_in_a_fresh_message(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, store = fake_discord, sqlite_store
    thread = fake.add_thread(fake.channel("general"), "songs")
    bot = await bot_runner.start(make_bot(fake, store))
    relay, worker = relay_of(bot), PlayedWorker(store)
    job = await _queued_in(fake, store, thread)
    first = progress_message(fake, job.id, "songs")
    assert first is not None

    thread.archived = True  # e.g. a day without messages
    caplog.set_level(logging.WARNING, logger="bot.relay")
    await worker.progress(job.id, window=1, of=10)
    await relay.run_pass()
    fresh = progress_message(fake, job.id, "songs")
    assert fresh is not None and fresh.id != first.id and "1/10" in fresh.content
    assert first.deleted and not thread.archived  # the message sent un-archived the thread
    assert (await store.get_job(job.id)).progress_message_id == fresh.id
    await worker.progress(job.id, window=2, of=10)
    await relay.run_pass()
    assert progress_message(fake, job.id, "songs") is fresh and "2/10" in fresh.content

    thread.archived = True  # again, before the results
    (sample_id,) = await worker.complete(job, n=1, full=False)
    await relay.run_pass()
    assert sample_message(fake, sample_id, "songs") is not None
    done = progress_message(fake, job.id, "songs")
    assert done is fresh and done.content.endswith("✅ Done: 1 sample below.")
    assert [r for r in caplog.records if r.name == "bot.relay"] == []
    assert [r.status for r in fake.rejections] == [400]  # the one edit refused in the archived thread


async def test_a_locked_thread_costs_one_warning_per_job_not_one_error_per_pass(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, store = fake_discord, sqlite_store
    thread = fake.add_thread(fake.channel("general"), "songs")
    bot = await bot_runner.start(make_bot(fake, store))
    relay, worker = relay_of(bot), PlayedWorker(store)
    job = await _queued_in(fake, store, thread)

    thread.archived = thread.locked = True  # a moderator closed it
    caplog.set_level(logging.WARNING, logger="bot.relay")
    for window in range(1, 4):
        await worker.progress(job.id, window=window, of=10)
        await relay.run_pass()
    warnings = [r for r in caplog.records if r.name == "bot.relay"]
    assert [r.levelno for r in warnings] == [logging.WARNING]
    assert f"job #{job.id}: cannot show its progress" in warnings[0].getMessage()
    assert "160005" in warnings[0].getMessage() and warnings[0].exc_info is None

    caplog.clear()
    (sample_id,) = await worker.complete(job, n=1, full=False)
    await relay.run_pass()
    assert (await store.get_job(job.id)).results_posted_at is not None  # given up
    assert sample_message(fake, sample_id, "songs") is None  # it stays stored, for `/sample` to re-send
    (given_up,) = [r for r in caplog.records if r.name == "bot.relay"]
    assert given_up.levelno == logging.WARNING and given_up.exc_info is None
    assert f"job #{job.id}: giving up posting its results" in given_up.getMessage()
    assert "160005" in given_up.getMessage()

    tried = len(fake.calls())
    await relay.run_pass()  # never tried again
    assert not [call for call in fake.calls()[tried:] if f"/channels/{thread.id}/" in call.path]


async def test_an_old_progress_message_whose_delete_met_a_cut_connection_goes_at_a_later_pass(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """The relay goes on in a fresh message and deletes the old one; that delete meets a cut connection
    (not an HTTP error): a later pass deletes it, so one progress message stays."""
    fake, store = fake_discord, sqlite_store
    thread = fake.add_thread(fake.channel("general"), "songs")
    bot = await bot_runner.start(make_bot(fake, store))
    job = await _queued_in(fake, store, thread)
    thread.archived = True
    # twice: aiohttp sends an idempotent request again, once, on a connection cut after reuse
    fake.fail_next("DELETE", "/channels/{channel_id}/messages/{message_id}", dropped=True, times=2)
    await PlayedWorker(store).progress(job.id, window=1, of=10)

    def shown() -> list[FakeMessage]:
        return [
            m for m in bot_messages(fake, "songs") if m.content.startswith("**Job #1**") and not m.deleted
        ]

    await relay_of(bot).run_pass()
    assert len(shown()) == 2  # the old one's delete got no answer
    await relay_of(bot).run_pass()
    assert len(shown()) == 1
