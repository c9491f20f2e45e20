"""Discord did a request, but the bot never heard back: a 503 (which discord.py does not try again), or a
connection cut. What the bot sends again carries the first try's nonce, so Discord answers with the
message it made instead of posting it twice; what it could not do waits for a later pass (a delete:
tests/bot/test_archived_threads.py)."""

from __future__ import annotations

import logging

import pytest

from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord
from tests.bot.harness import (
    PlayedWorker,
    bot_messages,
    make_bot,
    progress_message,
    recorded_progress_message,
    relay_of,
    reply_of,
)
from tests.bot.test_curate import curation_held, final_reply, made_job

MESSAGES = "/channels/{channel_id}/messages"


def _job_messages(fake: FakeDiscord, job_id: int, channel: str = "general") -> list[str]:
    return [
        m.content.splitlines()[-1]
        for m in bot_messages(fake, channel)
        if m.content.startswith(f"**Job #{job_id}**") and not m.deleted
    ]


async def test_a_progress_message_whose_answer_was_lost_is_posted_once(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    fake.fail_next("POST", MESSAGES, status=503, handled=True)  # the announcement of the job
    reply = await reply_of(fake, await fake.invoke_command("jukebox", {"artist": "queen", "samples": 1}))
    assert reply.startswith("Queued as job #1"), reply
    await fake.wait_for(lambda: fake.rejections or None)
    assert len(_job_messages(fake, 1)) == 1  # out, though the bot does not know it

    await relay_of(bot).run_pass()  # sends it again: Discord answers with the first
    first = await recorded_progress_message(store, 1)
    worker = PlayedWorker(store)
    job = await worker.claim()
    await worker.progress(job.id, window=3, of=10)
    await relay_of(bot).run_pass()
    assert len(_job_messages(fake, 1)) == 1
    shown = progress_message(fake, 1)
    assert shown is not None and shown.id == first and "Queued" not in shown.content


async def test_a_final_text_of_its_own_whose_answer_was_lost_is_posted_once(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """Someone deleted the job's progress message, then the job failed: its final text goes out in a
    message of its own, whose answer is lost."""
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    relay = relay_of(bot)
    await reply_of(fake, await fake.invoke_command("jukebox", {"artist": "queen", "samples": 1}))
    progress_id = await recorded_progress_message(store, 1)
    worker = PlayedWorker(store)
    job = await worker.claim()
    await fake._delete_message(fake.message(progress_id))
    await store.fail(job.id, worker.worker_id, "out of memory")
    fake.fail_next("POST", MESSAGES, status=503, handled=True)
    await relay.run_pass()  # sent; no answer: the claim is given back for the next pass
    await relay.run_pass()
    assert (await store.get_job(1)).results_posted_at is not None
    assert _job_messages(fake, 1) == ["❌ Failed: out of memory"]


async def test_a_curated_piece_whose_answer_was_lost_is_posted_once_and_recorded(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    await bot_runner.start(make_bot(fake, store))
    await made_job(fake, store, 3)
    fake.fail_next("POST", MESSAGES, status=503, handled=True)  # the piece's message
    reply = await final_reply(fake, await fake.invoke_command("curate", {"job": 1}))
    assert reply.startswith("Done: sample #4 "), reply
    posts = [m for m in bot_messages(fake) if "**Sample #4**" in m.content and not m.deleted]
    assert len(posts) == 1
    assert (await store.get_sample_info(4)).message_id == posts[0].id


async def test_a_curation_whose_progress_edit_met_a_cut_connection_still_makes_its_piece(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    await made_job(fake, store, 2)
    fake.fail_next("PATCH", "/webhooks/{application_id}/{token}/messages/{message_id}", dropped=True)
    async with curation_held(bot, fake) as (record, release):
        release.set()
    reply = await final_reply(fake, record)
    assert reply.startswith("Done: sample #3 "), reply


async def test_progress_edits_failing_pass_after_pass_log_one_traceback(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    relay, worker = relay_of(bot), PlayedWorker(store)
    await reply_of(fake, await fake.invoke_command("jukebox", {"samples": 1}))
    await recorded_progress_message(store, 1)
    job = await worker.claim()
    caplog.set_level(logging.WARNING, logger="bot.relay")
    relay.edit_budget.window_s = 0.0  # not Discord's rate limit here: one edit a pass
    fake.fail_next("PATCH", "/channels/{channel_id}/messages/{message_id}", status=503, times=5)
    for window in range(1, 6):
        await worker.progress(job.id, window=window, of=10)
        await relay.run_pass()
    failures = [r for r in caplog.records if "updating its progress message failed" in r.getMessage()]
    assert len(failures) == 5 and [bool(r.exc_info) for r in failures] == [True] + [False] * 4
    await relay.run_pass()  # Discord is back: the message catches up
    assert _job_messages(fake, 1)[0].startswith("`[")
