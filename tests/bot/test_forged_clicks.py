"""Clicks a tampered client sends with a button the clicked message does not carry (`forged=True`):
they are refused privately and change no message, no vote and no job; the real buttons still work.

A button's callback answers by editing the message it was clicked on, so a button that runs on any
message could rewrite anyone's: "Yes, cancel" turned a public sample message into "Job #2 is
cancelled…" without its buttons, and a vote for another sample replaced the message's buttons with
that sample's (a progress message lost its Cancel button).
"""

from __future__ import annotations

import pytest

from storage.models import JobStatus
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord, FakeMessage
from tests.bot.harness import (
    PlayedWorker,
    answer_of,
    job_count,
    make_bot,
    progress_message,
    queue_song,
    recorded_progress_message,
    relay_of,
    reply_of,
    sample_message,
    when,
)


def _no_vote_button(sample_id: int) -> str:
    return (
        f"This message has no vote button for sample #{sample_id}, so your vote was not counted. Vote "
        f"under the sample's own message, or post it again with `/sample {sample_id}`."
    )


def _not_the_question(job_id: int) -> str:
    return (
        "This button works only under the private question the Cancel button asks; nothing was "
        f"cancelled. To cancel job #{job_id}, use the Cancel button under its progress message, or "
        "`/cancel`."
    )


async def _two_samples(fake: FakeDiscord, store: JobStore, bot_runner: BotRunner) -> tuple[int, int]:
    """Alice's job #1, its two samples posted."""
    bot = await bot_runner.start(make_bot(fake, store))
    await queue_song(fake, "alice", artist="queen", samples=2)
    worker = PlayedWorker(store)
    first, second = await worker.complete(await worker.claim(), n=2, full=False)
    relay_of(bot).poke()
    for sample_id in (first, second):
        await fake.wait_for(when(lambda sample_id=sample_id: sample_message(fake, sample_id)))
    return first, second


async def _queued_job(fake: FakeDiscord, user: str) -> int:
    reply = await queue_song(fake, user, artist="queen", samples=1)
    return int(reply.split("#")[1].split(".")[0])


async def _with_its_cancel_button(fake: FakeDiscord, store: JobStore, job_id: int) -> FakeMessage:
    """The job's progress message, once it shows the Cancel button."""
    message = fake.message(await recorded_progress_message(store, job_id))
    await fake.wait_for(lambda: message.custom_ids == [f"jukebot:cancel:{job_id}"] or None)
    return message


def _shown(message: FakeMessage) -> tuple[str, list[dict[str, object]], int]:
    """What a click must leave as it was: the text, the buttons (labels too) and the edit count."""
    return message.content, [dict(button) for button in message.buttons], len(message.edits)


async def test_a_forged_yes_cancel_on_someone_elses_sample_message_is_refused_and_changes_nothing(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    first, _ = await _two_samples(fake, store, bot_runner)
    message = sample_message(fake, first)
    assert message is not None
    before = _shown(message)
    bobs_job = await _queued_job(fake, "bob")

    forged = await fake.click(
        message, f"jukebot:cancel-confirm:{bobs_job}", user=fake.user("bob"), forged=True
    )
    assert await reply_of(fake, forged) == _not_the_question(bobs_job)
    assert _shown(message) == before  # alice's sample keeps its text and its buttons
    assert (await store.get_job(bobs_job)).status is JobStatus.QUEUED
    assert fake.rejections == []


async def test_a_forged_yes_cancel_on_a_progress_message_is_refused_even_for_the_owner(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """The public progress message would lose its Cancel button and its progress for the answer."""
    fake, store = fake_discord, sqlite_store
    await bot_runner.start(make_bot(fake, store))
    job_id = await _queued_job(fake, "alice")
    message = await _with_its_cancel_button(fake, store, job_id)
    content = message.content

    forged = await fake.click(
        message, f"jukebot:cancel-confirm:{job_id}", user=fake.user("alice"), forged=True
    )
    assert await reply_of(fake, forged) == _not_the_question(job_id)
    assert message.content == content and message.custom_ids == [f"jukebot:cancel:{job_id}"]
    assert (await store.get_job(job_id)).status is JobStatus.QUEUED


async def test_a_forged_vote_for_another_sample_is_refused_and_leaves_the_buttons(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    first, second = await _two_samples(fake, store, bot_runner)
    message = sample_message(fake, first)
    assert message is not None
    before = _shown(message)

    forged = await fake.click(message, f"jukebot:vote:{second}", user=fake.user("bob"), forged=True)
    assert await reply_of(fake, forged) == _no_vote_button(second)
    assert _shown(message) == before
    assert await store.vote_count(second) == 0
    assert await store.vote_count(first) == 0

    # The real button under the same message still counts, and shows the count.
    await _bob_votes_under(fake, store, message, first)


async def test_a_forged_vote_on_a_progress_message_leaves_its_cancel_button(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    first, _ = await _two_samples(fake, store, bot_runner)
    job_id = await _queued_job(fake, "alice")
    message = await fake.wait_for(when(lambda: progress_message(fake, job_id)))
    await fake.wait_for(lambda: message.custom_ids == [f"jukebot:cancel:{job_id}"] or None)

    forged = await fake.click(message, f"jukebot:vote:{first}", user=fake.user("bob"), forged=True)
    assert await reply_of(fake, forged) == _no_vote_button(first)
    assert message.custom_ids == [f"jukebot:cancel:{job_id}"]  # alice can still cancel her job
    assert await store.vote_count(first) == 0


async def test_a_forged_vote_on_a_message_without_buttons_adds_none(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """The message's own copy in the click shows only the forged button: not enough to trust it."""
    fake, store = fake_discord, sqlite_store
    first, _ = await _two_samples(fake, store, bot_runner)
    asked = await fake.invoke_command("top", {"period": "all"})
    top = await fake.wait_for(lambda: answer_of(asked))
    assert not top.ephemeral and top.custom_ids == []
    before = _shown(top)

    forged = await fake.click(top, f"jukebot:vote:{first}", user=fake.user("bob"), forged=True)
    assert await reply_of(fake, forged) == _no_vote_button(first)
    assert _shown(top) == before
    assert await store.vote_count(first) == 0


async def test_votes_count_under_a_sample_posted_again_with_slash_sample(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    first, _ = await _two_samples(fake, store, bot_runner)
    resent = await fake.invoke_command("sample", {"id": first})
    again = await fake.wait_for(lambda: answer_of(resent))
    assert again.custom_ids[0] == f"jukebot:vote:{first}"

    await _bob_votes_under(fake, store, again, first)


async def test_a_split_sample_counts_votes_on_its_first_part_only(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    fake.default_guild.attachment_size_limit = 20_000  # a 12 s sample goes out in several messages
    bot = await bot_runner.start(make_bot(fake, store))
    await queue_song(fake, "alice", samples=1)
    worker = PlayedWorker(store)
    (sample_id,) = await worker.complete(await worker.claim(), n=1, full=False, seconds=12.0)
    relay_of(bot).poke()
    # Encoding a 12 s sample into parts is CPU work: generous bounds for a loaded machine.
    first = await fake.wait_for(when(lambda: sample_message(fake, sample_id)), timeout_s=120)

    def second_part() -> FakeMessage | None:
        prefix = f"Sample #{sample_id}, continued (2/"
        return next(
            (m for m in fake.channel_messages(fake.channel("general")) if m.content.startswith(prefix)), None
        )

    second = await fake.wait_for(second_part, timeout_s=120)
    assert second.custom_ids == []
    before = _shown(second)

    forged = await fake.click(second, f"jukebot:vote:{sample_id}", user=fake.user("bob"), forged=True)
    assert await reply_of(fake, forged) == _no_vote_button(sample_id)
    assert _shown(second) == before
    assert await store.vote_count(sample_id) == 0

    await fake.click(first, f"jukebot:vote:{sample_id}", user=fake.user("bob"))
    await fake.wait_for(lambda: first.buttons[0]["label"] == "👍 1" or None)
    assert await store.vote_count(sample_id) == 1
    assert fake.rejections == []


async def _bob_votes_under(fake: FakeDiscord, store: JobStore, message: FakeMessage, sample_id: int) -> None:
    """Bob's real vote under the sample's own message counts, and its label and buttons show it."""
    await fake.click(message, f"jukebot:vote:{sample_id}", user=fake.user("bob"))
    await fake.wait_for(lambda: message.buttons[0]["label"] == "👍 1" or None)
    assert message.custom_ids == [
        f"jukebot:vote:{sample_id}",
        f"jukebot:upsample:{sample_id}",
        f"jukebot:continue:{sample_id}",
    ]
    assert await store.vote_count(sample_id) == 1
    assert fake.rejections == []


@pytest.mark.parametrize("button", ["upsample", "continue"])  # each also a command of that name
async def test_a_forged_upsample_or_continue_on_a_message_without_it_queues_nothing(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore, button: str
) -> None:
    """The job would reply to the message the click was forged on (the README: refused); a forged
    Continue opens no form."""
    fake, store = fake_discord, sqlite_store
    first, second = await _two_samples(fake, store, bot_runner)
    message = sample_message(fake, first)
    assert message is not None
    before = (_shown(message), await job_count(store))

    forged = await fake.click(message, f"jukebot:{button}:{second}", user=fake.user("bob"), forged=True)
    assert forged.modal is None
    assert await reply_of(fake, forged) == (
        f"This message has no {button.capitalize()} button for sample #{second}, so nothing was queued. "
        f"Use the button under the sample's own message, or `/{button} {second}`."
    )
    assert (_shown(message), await job_count(store)) == before

    real = await fake.click(message, f"jukebot:{button}:{first}", user=fake.user("bob"))
    if real.modal is not None:  # Continue's form
        real = await fake.submit_modal(real, {"seconds": "5"})
    assert (await reply_of(fake, real)).startswith("Queued as job #")


async def test_a_forged_yes_cancel_under_the_question_about_another_job_cancels_nothing(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    await bot_runner.start(make_bot(fake, store))
    asked_about = await _queued_job(fake, "alice")
    other = await _queued_job(fake, "alice")
    message = await _with_its_cancel_button(fake, store, asked_about)
    asked = await fake.click(message, f"jukebot:cancel:{asked_about}", user=fake.user("alice"))
    question = await fake.wait_for(lambda: answer_of(asked))
    assert question.custom_ids == [f"jukebot:cancel-confirm:{asked_about}"]

    forged = await fake.click(
        question, f"jukebot:cancel-confirm:{other}", user=fake.user("alice"), forged=True
    )
    refusal = await fake.wait_for(lambda: next((m.content for m in forged.followups if m.ephemeral), None))
    assert refusal == (
        f"This question is not about job #{other}; nothing was cancelled. To cancel job #{other}, use the "
        "Cancel button under its progress message, or `/cancel`."
    )
    assert (await store.get_job(other)).status is JobStatus.QUEUED
    assert question.custom_ids == [f"jukebot:cancel-confirm:{asked_about}"]  # still asks

    await fake.click(question, f"jukebot:cancel-confirm:{asked_about}", user=fake.user("alice"))
    await fake.wait_for(lambda: question.custom_ids == [] or None)
    assert (await store.get_job(asked_about)).status is JobStatus.CANCELLED
    assert fake.rejections == []


async def test_a_forged_continue_whose_form_opened_before_the_checks_ended_queues_nothing(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """Checks slower than Discord allows before a form leave it to the submission (review: a forger
    could slow the message read with a burst of clicks, and the submission queued the job)."""
    fake, store = fake_discord, sqlite_store
    first, second = await _two_samples(fake, store, bot_runner)
    message = sample_message(fake, first)
    assert message is not None
    before = await job_count(store)
    read = fake.hold("GET", "/channels/{channel_id}/messages/{message_id}")  # past the form's checks
    forged = await fake.click(message, f"jukebot:continue:{second}", user=fake.user("bob"), forged=True)
    await fake.wait_for(lambda: forged.modal is not None or None)
    read.release()
    submitted = await fake.submit_modal(forged, {"seconds": "5"})
    assert await reply_of(fake, submitted) == (
        f"This message has no Continue button for sample #{second}, so nothing was queued. Use the button "
        f"under the sample's own message, or `/continue {second}`."
    )
    assert await job_count(store) == before
