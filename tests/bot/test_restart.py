"""A bot restart in the middle of jobs: progress keeps updating, old buttons work, missed results get posted."""

from __future__ import annotations

from storage.models import JobStatus
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import CALLBACK_UPDATE, FakeDiscord
from tests.bot.harness import (
    PlayedWorker,
    make_bot,
    progress_message,
    sample_message,
    sqlite_store,
    when,
)

__all__ = ["sqlite_store"]


async def _jukebox(fake: FakeDiscord, user: str, seed: int) -> None:
    record = await fake.invoke_command(
        "jukebox", {"artist": "queen", "genre": "pop", "samples": 1, "seed": seed}, user=fake.user(user)
    )
    await fake.wait_for(lambda: record.original is not None and not record.original.loading)
    assert record.original is not None and record.original.content.startswith("Queued as job #")


async def test_restart_resumes_progress_posts_missed_results_and_old_buttons_work(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    first_bot = await bot_runner.start(make_bot(fake, store))
    worker = PlayedWorker(store)

    # Job 1 finishes under the first bot: its preview (with buttons) is posted.
    await _jukebox(fake, "alice", 1)
    job1 = await worker.claim()
    (sample1,) = await worker.complete(job1, n=1, full=False)
    first_bot.relay.poke()
    preview = await fake.wait_for(when(lambda: sample_message(fake, sample1)))

    # Jobs 2 (bob) and 3 (mod) are running when the bot goes down.
    await _jukebox(fake, "bob", 2)
    await _jukebox(fake, "mod", 3)
    job2, job3 = await worker.claim(), await worker.claim()
    await worker.progress(job2.id, window=1, of=4)
    first_bot.relay.poke()
    progress2 = await fake.wait_for(when(lambda: progress_message(fake, job2.id)))
    await fake.wait_for(lambda: "window 1/4" in progress2.content)
    progress3 = await fake.wait_for(when(lambda: progress_message(fake, job3.id)))
    await bot_runner.stop(first_bot)

    # While it is down: job 2 moves on, job 3 finishes.
    await worker.progress(job2.id, window=2, of=4)
    (sample3,) = await worker.complete(job3, n=1, full=False)

    second_bot = await bot_runner.start(make_bot(fake, store))
    second_bot.relay.poke()
    await fake.wait_for(lambda: "window 2/4" in progress2.content)
    assert progress_message(fake, job2.id) is progress2  # the same message, edited; no new one
    posted3 = await fake.wait_for(when(lambda: sample_message(fake, sample3)))
    assert posted3.replied_to == progress3.id
    await fake.wait_for(lambda: progress3.content.endswith("✅ Done: 1 sample below."))

    # A button posted by the first bot works on the second.
    clicked = await fake.click(preview, f"jukebot:vote:{sample1}", user=fake.user("bob"))
    assert clicked.response_type == CALLBACK_UPDATE and preview.buttons[0]["label"] == "👍 1"

    # And job 2 completes through the second bot.
    await worker.progress(job2.id, window=4, of=4)
    (sample2,) = await worker.complete(job2, n=1, full=False)
    second_bot.relay.poke()
    await fake.wait_for(when(lambda: sample_message(fake, sample2)))
    assert (await store.get_job(job2.id)).status == JobStatus.SUCCEEDED
    # Each preview was posted exactly once across the restart.
    for sample_id in (sample1, sample2, sample3):
        posts = [
            m
            for m in fake.channel_messages(fake.channel("general"))
            if f"**Sample #{sample_id}**" in m.content
        ]
        assert len(posts) == 1
    assert fake.rejections == [] and fake.unknown_requests == []
