"""A results upload Discord never answers (a hung request: aiohttp gives up only after 5 minutes) held
the relay's pass, so every other job's results and progress, in every server, waited with it. The
pass now waits RESULTS_WAIT_S for a job's results, then goes on while they go on; later passes leave
the job to them, and a bot that stops meanwhile gives their claim back for the next bot."""

from __future__ import annotations

import pytest

from bot import relay as relay_module
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord, RequestRecord
from tests.bot.harness import (
    PlayedWorker,
    make_bot,
    progress_message,
    queued_song,
    relay_of,
    sample_posts,
    when,
)
from tests.waiting import wait_until

SAMPLE_POSTS = ("POST", "/channels/{channel_id}/messages")


def posts_in(fake: FakeDiscord, channel: str) -> list[RequestRecord]:
    return [
        r
        for r in fake.calls(*SAMPLE_POSTS)
        if r.path.endswith(f"/channels/{fake.channel(channel).id}/messages")
    ]


async def finished_jobs_in_two_channels(
    fake: FakeDiscord, store: JobStore
) -> dict[str, tuple[int, list[int]]]:
    """A finished one-sample job in #general and one in #music, queued in that order: channel -> (job
    id, sample ids)."""
    worker = PlayedWorker(store)
    await worker.start()
    finished = {}
    for channel in ("general", "music"):
        await queued_song(fake, store, channel)
        job = await worker.claim()
        finished[channel] = (job.id, await worker.complete(job, n=1, full=False))
    return finished


async def test_a_hung_results_upload_holds_up_no_other_jobs_results(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, store = fake_discord, sqlite_store
    monkeypatch.setattr(relay_module, "RESULTS_WAIT_S", 0.5)
    hung = fake.hold(*SAMPLE_POSTS)  # the first sample's upload, #general's: Discord never answers it
    finished = await finished_jobs_in_two_channels(fake, store)
    bot = await bot_runner.start(make_bot(fake, store))
    relay = relay_of(bot)
    try:
        await fake.wait_for(lambda: hung.arrived)
        (general_sample,), (music_sample,) = finished["general"][1], finished["music"][1]
        await fake.wait_for(when(lambda: sample_posts(fake, music_sample, "music")), timeout_s=20)
        # Later passes leave #general's results to the upload still under way: none sent twice.
        await relay.run_pass()
        await relay.run_pass()
        assert len(posts_in(fake, "general")) == 1  # the one held
        assert sample_posts(fake, general_sample) == []
    finally:
        hung.release()
    await fake.wait_for(when(lambda: sample_posts(fake, general_sample)), timeout_s=20)
    relay.poke()

    async def both_marked_posted() -> bool:
        return all([(await store.get_job(job_id)).results_posted_at for job_id, _ in finished.values()])

    await wait_until(both_marked_posted, within=20, what="both jobs' results marked posted")
    assert [len(sample_posts(fake, general_sample)), len(sample_posts(fake, music_sample, "music"))] == [1, 1]
    assert [len(posts_in(fake, "general")), len(posts_in(fake, "music"))] == [
        2,
        2,
    ]  # a sample, the final text
    assert fake.rejections == []

    async def slow_posting_forgotten() -> bool:
        return relay._slow_results == {}  # ended, it is not kept (review)

    await wait_until(slow_posting_forgotten, 10.0, "the ended slow posting to be forgotten")


async def test_a_bot_stopped_while_results_are_slow_hands_them_on_at_once(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, store = fake_discord, sqlite_store
    monkeypatch.setattr(relay_module, "RESULTS_WAIT_S", 0.5)
    monkeypatch.setattr(relay_module, "RESULTS_LEASE_S", 600.0)  # a claim not given back holds past the test
    fake.hold(*SAMPLE_POSTS)  # #general's upload hangs (and stays held: the stopped bot cut it short)
    finished = await finished_jobs_in_two_channels(fake, store)
    first = await bot_runner.start(make_bot(fake, store))
    (general_sample,), (music_sample,) = finished["general"][1], finished["music"][1]
    await fake.wait_for(when(lambda: sample_posts(fake, music_sample, "music")), timeout_s=20)
    await bot_runner.stop(first)
    job_id = finished["general"][0]
    assert (await store.get_job(job_id)).results_posting_owner is None  # given back as it stopped

    await bot_runner.start(make_bot(fake, store))
    await fake.wait_for(when(lambda: sample_posts(fake, general_sample)), timeout_s=20)

    async def marked_posted() -> bool:
        return (await store.get_job(job_id)).results_posted_at is not None

    await wait_until(marked_posted, within=20, what="the results marked posted")
    assert len(sample_posts(fake, general_sample)) == 1
    final = progress_message(fake, job_id)
    assert final is not None and "✅ Done" in final.content


async def test_jobs_queued_behind_a_hung_upload_in_its_channel_hold_up_no_other_channel(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each finished job had RESULTS_WAIT_S of its own, in turn: six jobs whose uploads queue behind a
    hung one in #general (discord.py sends one request at a time in a channel) held #music's results
    six times that long (review of the relay). The pass waits once for its results together; a
    channel's jobs behind a slow one wait for a later pass, and then go out in order."""
    fake, store = fake_discord, sqlite_store
    monkeypatch.setattr(relay_module, "RESULTS_WAIT_S", 2.0)
    worker = PlayedWorker(store)
    await worker.start()
    general: list[int] = []
    general_jobs: list[int] = []
    for _ in range(6):
        await queued_song(fake, store, "general")
        claimed = await worker.claim()
        general_jobs.append(claimed.id)
        general += await worker.complete(claimed, n=1, full=False)
    await queued_song(fake, store, "music")
    (music,) = await worker.complete(await worker.claim(), n=1, full=False)
    hung = fake.hold(*SAMPLE_POSTS)  # #general's first upload
    bot = await bot_runner.start(make_bot(fake, store))
    try:
        await fake.wait_for(lambda: hung.arrived, timeout_s=20)
        await fake.wait_for(when(lambda: sample_posts(fake, music, "music")), timeout_s=60)
        # The others wait their turn, not queued behind it (each waiting 2 s in turn, before #music's).
        assert len(posts_in(fake, "general")) == 1
        waiting = [(await store.get_job(job_id)).results_posting_owner for job_id in general_jobs[1:]]
        assert waiting == [None] * 5, waiting
    finally:
        hung.release()
    relay = relay_of(bot)

    async def all_posted() -> bool:
        relay.poke()
        return all(sample_posts(fake, sample_id, "general") for sample_id in general)

    await wait_until(all_posted, within=60, what="#general's results once Discord answers")
    order = [m.content for m in fake.channel_messages(fake.channel("general")) if "**Sample #" in m.content]
    assert [int(text.split("#")[1].split("*")[0]) for text in order] == general  # in order, each once
