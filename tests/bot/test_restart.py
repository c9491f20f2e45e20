"""A bot restart in the middle of jobs: progress keeps updating, old buttons work, missed results get
posted exactly once (the store records what is posted), and replies find their sample's message."""

from __future__ import annotations

import asyncio

from bot.bot import JukeBot
from storage.engine import create_engine
from storage.models import JobStatus
from storage.records import ClaimedJob
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import CALLBACK_DEFERRED_UPDATE, FakeDiscord, FakeMessage
from tests.bot.harness import (
    PlayedWorker,
    make_bot,
    progress_message,
    queue_song,
    relay_of,
    sample_message,
    when,
)


async def test_restart_resumes_progress_posts_missed_results_and_old_buttons_work(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    first_bot = await bot_runner.start(make_bot(fake, store))
    worker = PlayedWorker(store)

    # Job 1 finishes under the first bot: its preview (with buttons) is posted.
    await queue_song(fake, "alice", artist="queen", genre="pop", samples=1, seed=1)
    job1 = await worker.claim()
    (sample1,) = await worker.complete(job1, n=1, full=False)
    relay_of(first_bot).poke()
    preview = await fake.wait_for(when(lambda: sample_message(fake, sample1)))

    # Jobs 2 (bob) and 3 (mod) are running when the bot goes down.
    await queue_song(fake, "bob", artist="queen", genre="pop", samples=1, seed=2)
    await queue_song(fake, "mod", artist="queen", genre="pop", samples=1, seed=3)
    job2, job3 = await worker.claim(), await worker.claim()
    await worker.progress(job2.id, window=1, of=4)
    relay_of(first_bot).poke()
    progress2 = await fake.wait_for(when(lambda: progress_message(fake, job2.id)))
    await fake.wait_for(lambda: "window 1/4" in progress2.content)
    progress3 = await fake.wait_for(when(lambda: progress_message(fake, job3.id)))
    await bot_runner.stop(first_bot)

    # While it is down: job 2 moves on, job 3 finishes.
    await worker.progress(job2.id, window=2, of=4)
    (sample3,) = await worker.complete(job3, n=1, full=False)

    # Humans chat meanwhile: job 3's progress message is far back in the channel's history.
    for n in range(60):
        await fake.post_user_message(fake.channel("general"), fake.user("alice"), f"chat {n}")
    assert (await store.get_job(job3.id)).results_posted_at is None

    second_bot = await bot_runner.start(make_bot(fake, store))
    relay_of(second_bot).poke()
    await fake.wait_for(lambda: "window 2/4" in progress2.content)
    assert progress_message(fake, job2.id) is progress2  # the same message, edited; no new one
    posted3 = await fake.wait_for(when(lambda: sample_message(fake, sample3)))
    assert posted3.replied_to == progress3.id
    await fake.wait_for(lambda: progress3.content.endswith("✅ Done: 1 sample below."))
    await relay_of(second_bot).run_pass()  # waits out the pass that posted them: it marks them posted last
    assert (await store.get_job(job3.id)).results_posted_at is not None
    assert (await store.get_sample(sample3)).message_id == posted3.id
    assert (await store.get_sample(sample1)).message_id == preview.id

    # A button posted by the first bot works on the second.
    clicked = await fake.click(preview, f"jukebot:vote:{sample1}", user=fake.user("bob"))
    assert clicked.response_type == CALLBACK_DEFERRED_UPDATE  # acknowledged before the vote is written
    await fake.wait_for(lambda: preview.buttons[0]["label"] == "👍 1")

    # And job 2 completes through the second bot.
    await worker.progress(job2.id, window=4, of=4)
    (sample2,) = await worker.complete(job2, n=1, full=False)
    relay_of(second_bot).poke()
    await fake.wait_for(when(lambda: sample_message(fake, sample2)))
    assert (await store.get_job(job2.id)).status == JobStatus.SUCCEEDED
    await fake.wait_for(lambda: "✅ Done" in progress2.content)
    await relay_of(
        second_bot
    ).run_pass()  # waits out the pass in flight (a stop mid-post gives the claim back)

    # Another restart: the store says everything is posted, so nothing is posted or edited again.
    await bot_runner.stop(second_bot)
    requests_before = len(fake.requests)
    third_bot = await bot_runner.start(make_bot(fake, store))
    await relay_of(third_bot).run_pass()
    assert [
        r for r in fake.requests[requests_before:] if r.route.split(" ", 1)[-1].startswith("/channels/")
    ] == []
    for job in (job1, job2, job3):
        assert (await store.get_job(job.id)).results_posted_at is not None
    # Each preview was posted exactly once across the restarts.
    for sample_id in (sample1, sample2, sample3):
        assert len(_posts_of(fake, sample_id)) == 1
    assert fake.rejections == [] and fake.unknown_requests == []


def _posts_of(fake: FakeDiscord, sample_id: int) -> list[FakeMessage]:
    return [
        m for m in fake.channel_messages(fake.channel("general")) if f"**Sample #{sample_id}**" in m.content
    ]


async def test_an_upsample_finished_during_a_restart_replies_to_the_sample_it_upsampled(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    first_bot = await bot_runner.start(make_bot(fake, store))
    worker = PlayedWorker(store)
    await queue_song(fake, "alice", artist="queen", genre="pop", samples=1, seed=1)
    job1 = await worker.claim()
    first_id, second_id = await worker.complete(job1, n=2, full=False)
    relay_of(first_bot).poke()
    first_preview = await fake.wait_for(when(lambda: sample_message(fake, first_id)))
    second_preview = await fake.wait_for(when(lambda: sample_message(fake, second_id)))
    await relay_of(first_bot).run_pass()  # the pass that posted them has recorded their messages
    progress1 = progress_message(fake, job1.id)
    assert progress1 is not None
    assert (await store.get_sample(second_id)).message_id == second_preview.id

    # Upsample the SECOND preview (its message is neither job 1's progress message nor the first preview).
    click = await fake.click(second_preview, f"jukebot:upsample:{second_id}", user=fake.user("bob"))
    await fake.wait_for(lambda: click.original is not None and not click.original.loading)
    upsample = await worker.claim()
    assert upsample.parent_sample_id == second_id
    upsample_progress = await fake.wait_for(when(lambda: progress_message(fake, upsample.id)))
    assert upsample_progress.replied_to == second_preview.id
    await bot_runner.stop(first_bot)

    # It finishes while no bot runs; the new bot knows nothing of the click.
    (final_id,) = await worker.complete(upsample, n=1, full=True)
    second_bot = await bot_runner.start(make_bot(fake, store))
    relay_of(second_bot).poke()
    final = await fake.wait_for(when(lambda: sample_message(fake, final_id)))
    assert final.replied_to == second_preview.id
    assert final.replied_to not in (first_preview.id, progress1.id, upsample_progress.id)
    await fake.wait_for(lambda: upsample_progress.content.endswith("✅ Done: 1 sample below."))
    assert len(_posts_of(fake, final_id)) == 1
    assert fake.rejections == [] and fake.unknown_requests == []


async def _one_running_job(
    fake: FakeDiscord, bot_runner: BotRunner, store: JobStore
) -> tuple[JukeBot, PlayedWorker, ClaimedJob, FakeMessage]:
    """A bot, alice's /jukebox job claimed by the test's worker, and its progress message."""
    bot = await bot_runner.start(make_bot(fake, store))
    worker = PlayedWorker(store)
    await queue_song(fake, "alice", artist="queen", genre="pop", samples=1, seed=1)
    job = await worker.claim()
    progress = await fake.wait_for(when(lambda: progress_message(fake, job.id)))
    return bot, worker, job, progress


async def test_results_that_fail_to_post_part_way_are_finished_later_without_repeats(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    bot, worker, job, progress = await _one_running_job(fake, bot_runner, store)
    sample_ids = await worker.complete(job, n=2, full=False)

    # Both samples go out, then Discord fails the final progress edit once (503: discord.py does not
    # retry it; a 403 saying the bot cannot post there gives the results up, see test_relay_delivery).
    fake.fail_next("PATCH", "/channels/{channel_id}/messages/{message_id}", status=503)
    await relay_of(bot).run_pass()
    assert all(sample_message(fake, sample_id) for sample_id in sample_ids)
    assert (await store.get_job(job.id)).results_posted_at is None  # the claim was given back
    assert [r.status for r in fake.rejections] == [503]
    assert not progress.content.endswith("✅ Done: 2 samples below.")

    # The next pass edits the progress message and does not post the samples again.
    await relay_of(bot).run_pass()
    assert progress.content.endswith("✅ Done: 2 samples below.")
    for sample_id in sample_ids:
        assert len(_posts_of(fake, sample_id)) == 1
    assert (await store.get_job(job.id)).results_posted_at is not None


async def test_two_bots_at_once_post_each_result_once(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """Two bot processes on one database (two engines) race to post the same finished jobs."""
    fake, store = fake_discord, sqlite_store
    other_engine = create_engine(str(store.engine.url))
    try:
        first = await bot_runner.start(make_bot(fake, store))
        worker = PlayedWorker(store)
        jobs = []
        for seed, user in ((1, "alice"), (2, "bob"), (3, "mod")):
            await queue_song(fake, user, artist="queen", genre="pop", samples=1, seed=seed)
            job = await worker.claim()
            await fake.wait_for(when(lambda job_id=job.id: progress_message(fake, job_id)))
            jobs.append(job)
        # The second bot joins once the commands are answered (both would answer interactions).
        second = await bot_runner.start(make_bot(fake, JobStore(other_engine)))
        sample_ids = [sample_id for job in jobs for sample_id in await worker.complete(job, n=2, full=False)]

        await asyncio.gather(relay_of(first).run_pass(), relay_of(second).run_pass())

        for sample_id in sample_ids:
            assert len(_posts_of(fake, sample_id)) == 1
        assert fake.rejections == [] and fake.unknown_requests == []
    finally:
        await other_engine.dispose()


async def test_a_progress_message_out_of_edits_goes_on_in_a_fresh_one(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """Discord refuses edits to messages older than an hour once they have had many (30046)."""
    fake, store = fake_discord, sqlite_store
    bot, worker, job, old = await _one_running_job(fake, bot_runner, store)
    await relay_of(bot).run_pass()  # shows the job running

    fake.fail_next(
        "PATCH",
        "/channels/{channel_id}/messages/{message_id}",
        status=400,
        code=30046,
        message="Maximum number of edits to messages older than 1 hour reached. Try again later",
    )
    await worker.progress(job.id, window=2, of=4)
    await relay_of(bot).run_pass()

    assert [(r.status, (r.error or {}).get("code")) for r in fake.rejections] == [(400, 30046)]
    fresh = progress_message(fake, job.id)
    assert fresh is not None and fresh.id != old.id and "window 2/4" in fresh.content
    assert old.deleted
    assert (await store.get_job(job.id)).progress_message_id == fresh.id
    # Later progress and the results go to the fresh message.
    await worker.progress(job.id, window=3, of=4)
    await relay_of(bot).run_pass()
    assert "window 3/4" in fresh.content
    await worker.complete(job, n=1, full=False)
    await relay_of(bot).run_pass()
    assert fresh.content.endswith("✅ Done: 1 sample below.")


async def test_a_job_whose_progress_cannot_be_edited_does_not_hold_up_the_others(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    worker = PlayedWorker(store)
    jobs = []
    for seed, user in ((1, "alice"), (2, "bob")):
        await queue_song(fake, user, artist="queen", genre="pop", samples=1, seed=seed)
        jobs.append(await worker.claim())
        await fake.wait_for(when(lambda job_id=jobs[-1].id: progress_message(fake, job_id)))
    first, second = jobs
    sample_ids = await worker.complete(second, n=1, full=False)
    await worker.progress(first.id, window=2, of=4)

    # The first job's edit fails (Discord has a hiccup: a 503, which discord.py does not retry); the
    # same pass still posts the second job's results.
    fake.fail_next("PATCH", "/channels/{channel_id}/messages/{message_id}", status=503)
    await relay_of(bot).run_pass()
    assert [r.status for r in fake.rejections] == [503]
    assert sample_message(fake, sample_ids[0]) is not None
    second_progress = progress_message(fake, second.id)
    assert second_progress is not None and second_progress.content.endswith("✅ Done: 1 sample below.")
    # and the first job's progress shows on the next pass
    await relay_of(bot).run_pass()
    first_progress = progress_message(fake, first.id)
    assert first_progress is not None and "window 2/4" in first_progress.content
