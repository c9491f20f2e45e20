"""The count on a sample's vote button is the stored one once the clicks are answered, however they
interleave: two people voting at once, the first one's label edit overtaken on its way to Discord."""

from __future__ import annotations

from functools import partial

from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord, InteractionRecord
from tests.bot.harness import make_bot, sample_message
from tests.bot.test_commands import _preview
from tests.waiting import wait_until

LABEL_EDIT = "/webhooks/{application_id}/{token}/messages/{message_id}"


async def test_two_votes_at_once_leave_the_label_at_two(
    fake_discord: FakeDiscord, bot_runner: BotRunner, db_store: JobStore
) -> None:
    fake, store = fake_discord, db_store
    bot = await bot_runner.start(make_bot(fake, store))
    sample_id = await _preview(fake, store, bot)
    message = sample_message(fake, sample_id)
    assert message is not None
    vote = f"jukebot:vote:{sample_id}"

    first_edit = fake.hold("PATCH", LABEL_EDIT)
    await fake.click(message, vote, user=fake.user("alice"))
    await fake.wait_for(lambda: first_edit.arrived)  # alice's label edit, with the count her click saw
    await fake.click(message, vote, user=fake.user("bob"))

    async def both_stored() -> bool:
        return await store.vote_count(sample_id) == 2

    await wait_until(both_stored, within=10.0, what="bob's vote in the store")
    first_edit.release()
    await fake.wait_for(lambda: [call.status for call in fake.calls("PATCH", LABEL_EDIT)] == [200, 200])
    assert message.buttons[0]["label"] == "👍 2"
    assert fake.rejections == []


async def test_a_vote_whose_label_edit_discord_refuses_says_it_counts(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """Discord caps edits of messages over an hour old (30046): the vote is stored, so the member hears
    it counts (an apology read as "not counted", and the click that followed took the vote back)."""
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    sample_id = await _preview(fake, store, bot)
    message = sample_message(fake, sample_id)
    assert message is not None
    vote, bob = f"jukebot:vote:{sample_id}", fake.user("bob")
    refusal = "Maximum number of edits to messages older than 1 hour reached. Try again later"
    for counted in ("is counted", "is taken back"):
        fake.fail_next("PATCH", LABEL_EDIT, status=400, code=30046, message=refusal)
        record = await fake.click(message, vote, user=bob)
        told = await fake.wait_for(partial(private_reply, record))
        votes = await store.vote_count(sample_id)
        assert told == (
            f"Your vote {counted}: sample #{sample_id} has {votes} vote{'' if votes == 1 else 's'} now. "
            f"The button could not show it (Discord said: {refusal})."
        )
        assert message.buttons[0]["label"] == "👍 0"  # unchanged
    assert await store.vote_count(sample_id) == 0
    await fake.click(message, vote, user=bob)  # the next vote shows the count
    await fake.wait_for(lambda: message.buttons[0]["label"] == "👍 1")


def private_reply(record: InteractionRecord) -> str | None:
    return next((f.content for f in record.followups if f.ephemeral), None)
