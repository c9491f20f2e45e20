"""The Cancel button under a job's progress message: the same rules and replies as `/cancel`, gone
once the job can no longer be stopped, and working after a restart."""

from __future__ import annotations

from bot.progress import MARK_CANCELLED
from storage.models import JobStatus
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord, FakeMessage, FakeUser, InteractionRecord
from tests.bot.harness import (
    PlayedWorker,
    make_bot,
    queue_song,
    recorded_progress_message,
    relay_of,
    reply_of,
)

NOT_YOURS = (
    "Job #{job} belongs to someone else; only the person who started it, or a member who may manage "
    "messages in its channel, can cancel it."
)


async def _progress_with_button(fake: FakeDiscord, store: JobStore, job_id: int) -> FakeMessage:
    message = fake.message(await recorded_progress_message(store, job_id))
    await fake.wait_for(lambda: message.custom_ids == [f"jukebot:cancel:{job_id}"] or None)
    return message


async def _question(fake: FakeDiscord, asked: InteractionRecord) -> FakeMessage:
    """The private question a Cancel click gets, once the bot has asked it."""
    question = await fake.wait_for(
        lambda: asked.original if asked.original is not None and not asked.original.loading else None
    )
    assert question.ephemeral
    return question


async def _confirm(fake: FakeDiscord, question: FakeMessage, job_id: int, user: FakeUser) -> str:
    """Press "Yes, cancel" under the question; the bot's answer replaces the question."""
    await fake.click(question, f"jukebot:cancel-confirm:{job_id}", user=user)
    await fake.wait_for(lambda: not question.content.startswith("Cancel job") or None)
    assert question.custom_ids == []  # nothing left to press twice
    return question.content


async def test_the_owner_cancels_a_queued_job_with_the_button_and_the_button_goes(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    await bot_runner.start(make_bot(fake_discord, sqlite_store))
    await queue_song(fake_discord)
    message = await _progress_with_button(fake_discord, sqlite_store, 1)
    bob, alice = fake_discord.user("bob"), fake_discord.user("alice")
    refused = await fake_discord.click(message, "jukebot:cancel:1", user=bob)
    assert await reply_of(fake_discord, refused) == NOT_YOURS.format(job=1)
    assert (await sqlite_store.get_job(1)).status is JobStatus.QUEUED
    question = await _question(
        fake_discord, await fake_discord.click(message, "jukebot:cancel:1", user=alice)
    )
    # a stray click ends nothing: the button asks first
    assert question.content == "Cancel job #1? It has not started."
    assert question.custom_ids == ["jukebot:cancel-confirm:1"]
    assert (await sqlite_store.get_job(1)).status is JobStatus.QUEUED
    assert await _confirm(fake_discord, question, 1, alice) == "Job #1 is cancelled; it had not started."
    await fake_discord.wait_for(
        lambda: (message.content.startswith("**Job #1**") and MARK_CANCELLED in message.content) or None
    )
    await fake_discord.wait_for(lambda: message.custom_ids == [] or None)
    again = await fake_discord.click(message, "jukebot:cancel:1", user=alice, forged=True)  # a stale client
    assert await reply_of(fake_discord, again) == (
        "Job #1 has already finished (cancelled); there is nothing left to cancel."
    )


async def test_a_moderator_stops_a_running_job_with_the_button_after_a_restart(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    moderator = fake_discord.user("moderator")
    first = await bot_runner.start(make_bot(fake_discord, sqlite_store))
    await queue_song(fake_discord)
    message = await _progress_with_button(fake_discord, sqlite_store, 1)
    worker = PlayedWorker(sqlite_store)
    assert (await worker.claim()).id == 1
    await bot_runner.stop(first)
    bot = await bot_runner.start(make_bot(fake_discord, sqlite_store))  # the button outlives the process
    await worker.progress(1, window=3, of=8)
    question = await _question(
        fake_discord, await fake_discord.click(message, "jukebot:cancel:1", user=moderator)
    )
    alice = fake_discord.user("alice")
    assert question.content == (
        f"Cancel job #1 (started by <@{alice.id}>)? It is running (37% done); what it sampled so far "
        "is not posted."
    )
    assert await _confirm(fake_discord, question, 1, moderator) == (
        f"Job #1 (started by <@{alice.id}>) is stopping after its current step; nothing of it is "
        "posted, unless it finishes first."
    )
    assert (await sqlite_store.get_job(1)).status is JobStatus.CANCELLING
    # "cancelling", and by whom, for the job's user to read: nothing left to press
    by = f"✋ Cancelling (by a moderator, <@{moderator.id}>): stopping after the current step."
    await fake_discord.wait_for(lambda: (message.content.endswith(by) and message.custom_ids == []) or None)
    await worker.cancelled(1)  # the worker stops after its step
    await relay_of(bot).run_pass()
    await fake_discord.wait_for(
        lambda: message.content.endswith(f"🛑 Cancelled (by a moderator, <@{moderator.id}>).") or None
    )
