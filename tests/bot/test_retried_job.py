"""A job an operator retries (`jukebot jobs retry`) after it failed: the bot shows it queued and
running again in its progress message, and posts its results once it succeeds."""

from __future__ import annotations

import logging

import pytest

from bot.progress import MARK_DONE, MARK_FAILED
from storage.models import JobStatus
from storage.records import ClaimedJob, Job
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord
from tests.bot.harness import (
    PlayedWorker,
    make_bot,
    progress_message,
    queue_song,
    relay_of,
    sample_message,
    when,
)


async def _failed_job(
    fake: FakeDiscord, store: JobStore, reason: str, checkpoint: bytes | None = None
) -> tuple[PlayedWorker, ClaimedJob]:
    """/jukebox, then a played worker takes the job (saves `checkpoint`) and gives it up."""
    await queue_song(fake)
    worker = PlayedWorker(store)
    job = await worker.claim()
    if checkpoint is not None:
        await store.save_checkpoint(job.id, worker.worker_id, checkpoint)
    await store.fail(job.id, worker.worker_id, reason)
    return worker, job


async def test_a_retried_job_runs_again_from_its_checkpoint_and_its_results_go_out(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    worker, job = await _failed_job(
        fake, store, "The model file is damaged; the operator was told.", b"two windows of codes"
    )
    await relay_of(bot).run_pass()
    failed = await fake.wait_for(when(lambda: progress_message(fake, job.id)))
    assert MARK_FAILED in failed.content

    await store.retry_job(job.id)  # what `jukebot jobs retry` does, its cause fixed
    await relay_of(bot).run_pass()
    await fake.wait_for(lambda: "Queued: position 1 in the queue." in failed.content or None)
    assert failed.custom_ids == [f"jukebot:cancel:{job.id}"]  # it can be stopped again
    again = await worker.claim()
    assert again.id == job.id and again.checkpoint == b"two windows of codes"  # resumes, loses nothing
    (sample_id,) = await worker.complete(again, n=1, full=False)
    await relay_of(bot).run_pass()
    await fake.wait_for(when(lambda: sample_message(fake, sample_id)))
    await fake.wait_for(lambda: (MARK_DONE in failed.content and failed.custom_ids == []) or None)


async def test_a_job_retried_while_the_relay_lists_it_is_left_to_run_without_an_error(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The relay lists the failed job, then the operator's retry lands before it claims the results."""
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    _, job = await _failed_job(fake, store, "out of memory")
    listing = store.finished_jobs_unposted

    async def listed_then_retried(guild_id: int, limit: int) -> list[Job]:
        found = await listing(guild_id, limit=limit)
        if any(listed.id == job.id for listed in found):
            await store.retry_job(job.id)
        return found

    monkeypatch.setattr(store, "finished_jobs_unposted", listed_then_retried)
    with caplog.at_level(logging.WARNING, logger="bot.relay"):
        await relay_of(bot).run_pass()
    assert not [record for record in caplog.records if record.name == "bot.relay"], caplog.text
    assert (await store.get_job(job.id)).status is JobStatus.QUEUED
    assert relay_of(bot)._failures.get(job.id) is None  # no back-off for a job that did not fail to post


async def test_a_job_retried_and_finished_while_the_relay_lists_it_gets_its_new_results_posted(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The relay lists the failed job; before it claims the results the operator retries it and a
    worker finishes it: the claim succeeds (the job is finished again), and what goes out is the
    job as it is now, its samples, not the failure the listing saw."""
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    worker, job = await _failed_job(fake, store, "out of memory")
    listing = store.finished_jobs_unposted
    made: list[int] = []

    async def listed_then_retried_and_finished(guild_id: int, limit: int) -> list[Job]:
        found = await listing(guild_id, limit=limit)
        if any(listed.id == job.id for listed in found) and not made:
            await store.retry_job(job.id)
            made.extend(await worker.complete(await worker.claim(), n=1, full=False))
        return found

    monkeypatch.setattr(store, "finished_jobs_unposted", listed_then_retried_and_finished)
    await relay_of(bot).run_pass()
    (sample_id,) = made
    await fake.wait_for(when(lambda: sample_message(fake, sample_id)))
    progress = await fake.wait_for(when(lambda: progress_message(fake, job.id)))
    assert MARK_DONE in progress.content and MARK_FAILED not in progress.content
