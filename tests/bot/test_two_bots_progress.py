"""Two bots on one database (README: several bot processes may share it) each post a progress message
for a job that has none. Both post with the job's nonce: within Discord's nonce memory the second post
is answered with the first message, which both record; later (a post held for minutes), the one
recorded first stands and the other bot deletes its own. Either way the channel never keeps a second
message frozen at "Queued"."""

from __future__ import annotations

import asyncio

import pytest

from storage.engine import create_engine
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord, FakeMessage
from tests.bot.harness import (
    PlayedWorker,
    bot_messages,
    make_bot,
    progress_message,
    queue_song,
    queued_song,
    relay_of,
    sample_message,
    when,
)


@pytest.mark.parametrize("nonce_remembered", [True, False], ids=["within-minutes", "minutes-later"])
async def test_a_progress_message_two_bots_post_at_once_is_kept_once(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, nonce_remembered: bool
) -> None:
    fake, store = fake_discord, sqlite_store
    job_id = await queued_song(fake, store)
    first_bots_post = fake.hold("POST", "/channels/{channel_id}/messages")
    first = await bot_runner.start(make_bot(fake, store))
    await fake.wait_for(lambda: first_bots_post.arrived)
    second = await bot_runner.start(make_bot(fake, store))  # sees no progress message either

    def progress_messages() -> list[FakeMessage]:
        return [m for m in bot_messages(fake) if m.content.startswith(f"**Job #{job_id}**")]

    await fake.wait_for(lambda: progress_messages() or None)  # the second bot's
    if not nonce_remembered:
        fake.let_nonces_expire()
    first_bots_post.release()
    for bot in (first, second):
        await relay_of(bot).run_pass()  # after the pass that posted (and recorded) its message
    if nonce_remembered:  # Discord answered the first bot's post with the second bot's message
        assert len(progress_messages()) == 1 and not progress_messages()[0].deleted
    else:
        assert len(progress_messages()) == 2
        # Whichever bot recorded its message first keeps it (the second bot may not have recorded its
        # own yet when the first one's lands): the other deletes its own.
        await fake.wait_for(lambda: [m for m in progress_messages() if m.deleted] or None)

    (kept,) = [m for m in progress_messages() if not m.deleted]
    assert kept.id == (await store.get_job(job_id)).progress_message_id


async def test_a_running_text_one_bot_sends_late_does_not_cover_the_others_final_text(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """Bot B's edit of a running job's text landed after bot A posted the job's results and final
    text: the message said "75 %" under its own results for good, as nothing edits a finished job
    (review of the relay)."""
    fake, store = fake_discord, sqlite_store
    other_engine = create_engine(str(store.engine.url))
    try:
        first = await bot_runner.start(make_bot(fake, store))
        worker = PlayedWorker(store)
        await queue_song(fake, "alice", artist="queen", genre="pop", samples=1, seed=1)
        job = await worker.claim()
        message = await fake.wait_for(when(lambda: progress_message(fake, job.id)))
        second = await bot_runner.start(make_bot(fake, JobStore(other_engine)))
        relay_of(second).min_edit_interval_s = 0.0
        await worker.progress(job.id, window=3, of=4)
        held = fake.hold("PATCH", "/channels/{channel_id}/messages/{message_id}")  # B's, in flight
        second_pass = asyncio.create_task(relay_of(second).run_pass())
        await fake.wait_for(lambda: held.arrived)
        (sample_id,) = await worker.complete(job, n=1, full=False)
        await relay_of(first).run_pass()  # A posts the sample and the final text
        await fake.wait_for(when(lambda: sample_message(fake, sample_id)))
        final = message.content
        assert final.endswith("Done: 1 sample below."), final
        held.release()
        await second_pass
        assert message.content == final
    finally:
        await other_engine.dispose()
