"""`/sample` prepares a sample's files and picture in turn with every other sample the bot prepares
(one thread each, shared with the relay's results and /curate). A long queue ahead of it outlived the
interaction's 15-minute token: nothing was posted, the public "thinking…" stayed, and even the error
reply was refused (401, 50027). Now a /sample not ready in time is given up while the member can still
be told, and a member has one /sample in preparation at a time."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from bot import delivery, pictures
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord, InteractionRecord
from tests.bot.harness import make_bot, posted_preview, sample_posts

TOKEN_LIFETIME_S = 10.0  # stands for Discord's 15 minutes (long past the bot's deadline: slow machines)
READY_WITHIN_S = 1.0  # stands for the bot's 12


@contextlib.contextmanager
def queued_ahead(executor: ThreadPoolExecutor) -> Iterator[None]:
    """Work queued ahead on `executor` (the re-encoding or the drawing thread) until the block ends."""
    go_on = threading.Event()
    executor.submit(go_on.wait, 60)
    try:
        yield
    finally:
        go_on.set()


def shorten_deadlines(fake: FakeDiscord, monkeypatch: pytest.MonkeyPatch) -> None:
    """The token's 15 minutes and the bot's 12 as seconds."""
    monkeypatch.setattr(sys.modules["bot.exts.samples"], "SAMPLE_READY_WITHIN_S", READY_WITHIN_S)
    fake.token_lifetime_s = TOKEN_LIFETIME_S


def private_reply(record: InteractionRecord) -> str | None:
    return next((f.content for f in record.followups if f.ephemeral), None)


async def test_a_sample_not_ready_in_time_is_given_up_while_the_member_can_be_told(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = fake_discord
    sid = await posted_preview(fake, sqlite_store, await bot_runner.start(make_bot(fake, sqlite_store)))
    shorten_deadlines(fake, monkeypatch)
    fake.default_guild.attachment_size_limit = 40_000  # the sample is re-encoded to fit
    with queued_ahead(delivery._REENCODER):  # longer than the token lives
        record = await fake.invoke_command("sample", {"id": sid}, user=fake.user("bob"))
        told = await fake.wait_for(lambda: private_reply(record), timeout_s=10)
    assert told == str(delivery.NotInTime())
    assert record.original is not None and record.original.deleted  # no "thinking…" left behind
    assert fake.rejections == []  # all within the token's life
    assert len(sample_posts(fake, sid)) == 1  # nothing posted half-way

    fake.token_lifetime_s = 60.0
    monkeypatch.setattr(sys.modules["bot.exts.samples"], "SAMPLE_READY_WITHIN_S", 60.0)
    again = await fake.invoke_command("sample", {"id": sid}, user=fake.user("bob"))
    await fake.wait_for(lambda: len(sample_posts(fake, sid)) == 2 or None, timeout_s=20)
    assert private_reply(again) is None


async def test_a_sample_whose_picture_is_not_ready_in_time_goes_out_without_it(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = fake_discord
    sid = await posted_preview(fake, sqlite_store, await bot_runner.start(make_bot(fake, sqlite_store)))
    shorten_deadlines(fake, monkeypatch)
    with queued_ahead(pictures._DRAWER):  # longer than the token lives
        record = await fake.invoke_command("sample", {"id": sid}, user=fake.user("bob"))
        await fake.wait_for(lambda: len(sample_posts(fake, sid)) == 2 or None, timeout_s=10)
    again = sample_posts(fake, sid)[-1]
    names = [attachment.filename for attachment in again.attachments]
    assert names and not [name for name in names if name.endswith(".png")], names
    assert private_reply(record) is None and fake.rejections == []


async def test_a_member_has_one_sample_in_preparation_at_a_time(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
) -> None:
    fake = fake_discord
    sid = await posted_preview(fake, sqlite_store, await bot_runner.start(make_bot(fake, sqlite_store)))
    with queued_ahead(pictures._DRAWER):
        first = await fake.invoke_command("sample", {"id": sid}, user=fake.user("bob"))
        second = await fake.invoke_command("sample", {"id": sid}, user=fake.user("bob"))
        refused = await fake.wait_for(lambda: (second.original and second.original.content) or None)
        others = await fake.invoke_command("sample", {"id": sid}, user=fake.user("alice"))
    assert refused == "Your previous /sample is still being prepared; wait for it, then ask again."
    assert second.original is not None and second.original.ephemeral
    await fake.wait_for(lambda: len(sample_posts(fake, sid)) == 3 or None, timeout_s=20)
    assert private_reply(first) is None and private_reply(others) is None
