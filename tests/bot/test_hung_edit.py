"""A progress edit Discord never answers (a hung request: aiohttp gives up only after 5 minutes) held
the relay's pass, so every other job's progress, in every server, and the results behind it waited
with it. The pass now waits PROGRESS_EDIT_TIMEOUT_S for an edit, then goes on without it; the edit
goes on too, and the job's next edit waits for it."""

from __future__ import annotations

import pytest

from bot import relay as relay_module
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord
from tests.bot.harness import (
    PlayedWorker,
    make_bot,
    progress_message,
    queued_song,
    relay_of,
    sample_posts,
    when,
)


async def test_a_hung_progress_edit_holds_up_no_other_jobs_progress(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, store = fake_discord, sqlite_store
    monkeypatch.setattr(relay_module, "PROGRESS_EDIT_TIMEOUT_S", 0.5)
    job_ids = {}
    for channel in ("general", "music"):
        job_ids[channel] = await queued_song(fake, store, channel)
    bot = await bot_runner.start(make_bot(fake, store))
    relay = relay_of(bot)
    relay.min_edit_interval_s = 0.0
    await fake.wait_for(when(lambda: all(progress_message(fake, j, c) for c, j in job_ids.items())))
    worker = PlayedWorker(store)
    await worker.start()
    first = await worker.claim()
    assert first.id == job_ids["general"]
    hung = fake.hold("PATCH", "/channels/{channel_id}/messages/{message_id}")
    try:
        await worker.progress(first.id, window=1, of=4)
        relay.poke()
        await fake.wait_for(lambda: hung.arrived)  # the general job's edit: Discord never answers it
        second = await worker.claim()
        await worker.progress(second.id, window=2, of=4)
        relay.poke()

        def music_shows_its_progress() -> bool:
            message = progress_message(fake, second.id, "music")
            return message is not None and "2/4" in message.content

        await fake.wait_for(music_shows_its_progress, timeout_s=20)
        # The hung edit is left to go on, not cut short and sent again (discord.py cut short in its
        # wait for a global rate limit would leave every later request waiting, review)
        general = progress_message(fake, first.id, "general")
        assert general is not None
        await relay.run_pass()
        edits = [
            r for r in fake.requests if r.method == "PATCH" and r.path.endswith(f"/messages/{general.id}")
        ]
        assert len(edits) == 1 and edits[0].status is None  # still held, unanswered
    finally:
        hung.release()

    def general_shows_its_progress() -> bool:  # tried again at a later pass
        message = progress_message(fake, first.id, "general")
        return message is not None and "1/4" in message.content

    relay.poke()
    await fake.wait_for(general_shows_its_progress, timeout_s=20)


async def test_a_hung_new_progress_message_holds_up_no_other_jobs_results(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new job's first progress message was sent with no time limit: while Discord did not answer
    it, no other job's progress nor results went out, in any server (review of the relay)."""
    fake, store = fake_discord, sqlite_store
    monkeypatch.setattr(relay_module, "PROGRESS_PASS_WAIT_S", 1.0)
    worker = PlayedWorker(store)
    await worker.start()
    await queued_song(fake, store, "music")
    (sample_id,) = await worker.complete(await worker.claim(), n=1, full=False)  # results to post
    general_job = await queued_song(fake, store, "general")  # queued while no bot ran
    hung = fake.hold("POST", "/channels/{channel_id}/messages")  # the first: general's progress message
    bot = await bot_runner.start(make_bot(fake, store))
    try:
        await fake.wait_for(lambda: hung.arrived, timeout_s=20)
        await fake.wait_for(when(lambda: sample_posts(fake, sample_id, "music")), timeout_s=20)
        relay = relay_of(bot)
        await relay.run_pass()  # the held message goes on: none is sent again meanwhile
        general = fake.channel("general").id
        posts = [
            r
            for r in fake.requests
            if r.method == "POST" and r.path.endswith(f"/channels/{general}/messages")
        ]
        assert len(posts) == 1 and posts[0].status is None  # still held, unanswered
    finally:
        hung.release()
    await fake.wait_for(when(lambda: progress_message(fake, general_job, "general")), timeout_s=20)
