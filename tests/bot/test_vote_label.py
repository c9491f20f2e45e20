"""The count on a sample's vote button is the stored one once the clicks are answered, however they
interleave: two people voting at once, the first one's label edit overtaken on its way to Discord."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from storage.engine import create_engine
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord
from tests.bot.harness import make_bot, sample_message
from tests.bot.test_commands import _preview
from tests.waiting import wait_until

LABEL_EDIT = "/webhooks/{application_id}/{token}/messages/{message_id}"


@pytest.fixture
async def db_store(db_url: str) -> AsyncIterator[JobStore]:
    """A store with the real clock on each database kind."""
    engine = create_engine(db_url)
    yield JobStore(engine)
    await engine.dispose()


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
