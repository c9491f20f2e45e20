"""A sample or curated piece too big for one message goes out in parts; Discord refuses a later part.

What is posted stays posted, the store says how far it got, and the member is told which part failed,
why, and how to get the whole of it."""

from __future__ import annotations

import asyncio
import re

from bot import curating
from bot.curating import Similarity
from bot.relay import continued_text
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord
from tests.bot.harness import bot_messages, make_bot, posted_preview, sample_posts
from tests.bot.test_curate import final_reply, made_job

MISSING_PERMISSIONS = {"status": 403, "code": 50013, "message": "Missing Permissions"}


async def test_sample_whose_second_part_is_refused_keeps_its_first_and_says_which_part_failed(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    sid = await posted_preview(fake, store, await bot_runner.start(make_bot(fake, store)))
    fake.default_guild.attachment_size_limit = 40_000  # the sample no longer fits one message
    # The first followup fills the public "thinking…" message (part 1); the second (part 2) is refused.
    fake.fail_next("POST", "/webhooks/{application_id}/{token}", after=1, **MISSING_PERMISSIONS)

    record = await fake.invoke_command("sample", {"id": sid}, user=fake.user("bob"))
    told = await fake.wait_for(lambda: next((f for f in record.followups if f.ephemeral), None))

    match = re.fullmatch(
        rf"Sample #{sid} comes in (\d+) parts: part 1 is posted above, but part 2 could not be posted "
        rf"\(Discord said: Missing Permissions\)\. `/sample {sid}` posts the whole sample again\.",
        told.content,
    )
    assert match is not None, told.content
    assert int(match[1]) >= 2
    first = record.original
    assert first is not None and not first.deleted and not first.ephemeral
    assert first.content.startswith(f"**Sample #{sid}** · job #1 by ") and first.attachments
    assert f"jukebot:vote:{sid}" in first.custom_ids
    await asyncio.sleep(0.5)  # nothing more: no apology, nothing deleted later
    assert not first.deleted
    assert [f for f in record.followups if f.ephemeral] == [told]
    assert "went wrong" not in told.content


async def test_piece_whose_second_part_is_refused_is_recorded_part_way_and_the_reply_says_so(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    limit = 24 * 1024  # under the piece: it goes out in parts
    await bot_runner.start(make_bot(fake, store))
    await made_job(fake, store, 3, seconds=4.0)
    fake.default_guild.attachment_size_limit = limit
    before = len(bot_messages(fake))
    fake.fail_next("POST", "/channels/{channel_id}/messages", after=1, **MISSING_PERMISSIONS)

    reply = await final_reply(fake, await fake.invoke_command("curate", {"job": 1}))

    match = re.fullmatch(
        r"Sample #4 is made and stored, and comes in (\d+) parts: I posted part 1 in this channel, but "
        r"not the rest \(Discord said: Missing Permissions\)\. `/sample 4` posts it whole where I may\.",
        reply,
    )
    assert match is not None, reply
    total = int(match[1])
    posted = [m for m in bot_messages(fake)[before:] if not m.deleted]
    assert len(posted) == 1 and posted[0].content.startswith("**Sample #4**")
    assert posted[0].custom_ids[0] == "jukebot:vote:4"
    info = await store.get_sample_info(4)
    # Recorded as the relay records a sample posted part-way: its first message, and how far it got.
    assert info.message_id == posted[0].id and not info.posted
    parts = info.message_parts
    assert parts is not None and (parts.sent, parts.total, parts.upload_limit) == (1, total, limit)

    resent = await fake.invoke_command("sample", {"id": 4}, channel=fake.channel("music"))
    await fake.wait_for(lambda: resent.original is not None and not resent.original.loading)
    assert [m.content.startswith("**Sample #4** · job #2 by ") for m in sample_posts(fake, 4, "music")] == [
        True
    ]


async def test_sample_in_parts_numbers_its_later_parts_as_the_relay_does(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """`/sample` of a sample in parts: its later messages say which part of how many, as the relay's
    and `/curate`'s do (it said only "continued")."""
    fake, store = fake_discord, sqlite_store
    sid = await posted_preview(fake, store, await bot_runner.start(make_bot(fake, store)))
    fake.default_guild.attachment_size_limit = 40_000  # the sample no longer fits one message

    record = await fake.invoke_command("sample", {"id": sid}, user=fake.user("bob"))

    def later_parts() -> list[str]:
        return [f.content for f in record.followups if not f.ephemeral and f is not record.original]

    second = await fake.wait_for(lambda: later_parts()[:1] or None)
    counted = re.fullmatch(rf"Sample #{sid}, continued \(2/(\d+)\)", second[0])
    assert counted is not None, second
    total = int(counted[1])
    await fake.wait_for(lambda: len(later_parts()) == total - 1)
    assert later_parts() == [continued_text(sid, index, total) for index in range(1, total)]
    assert record.original is not None and record.original.content.startswith(
        f"**Sample #{sid}** · job #1 by "
    )


async def test_piece_whose_strip_alone_is_refused_is_posted_and_the_reply_says_only_the_strip_is_missing(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """The audio fits one message and the strip follows in its own: that second message refused,
    the reply said the piece "comes in 2 parts" and only part 1 was posted, of a piece all heard."""
    fake, store = fake_discord, sqlite_store
    await bot_runner.start(make_bot(fake, store))
    ids = await made_job(fake, store, 3)
    samples = [await store.get_sample(sample_id) for sample_id in ids]
    piece = curating.make_piece(samples, Similarity.CHROMAPRINT, lambda _: None)  # as /curate will
    fake.default_guild.attachment_size_limit = len(piece.audio) + len(piece.strip) // 2
    before = len(bot_messages(fake))
    fake.fail_next("POST", "/channels/{channel_id}/messages", after=1, **MISSING_PERMISSIONS)

    reply = await final_reply(fake, await fake.invoke_command("curate", {"job": 1}))

    assert reply == (
        "Done: sample #4 is posted in this channel (similarity: Chromaprint fingerprints). Its picture "
        "of the order, which comes after the audio, was not posted (Discord said: Missing Permissions); "
        "`/sample 4` posts the piece with it."
    )
    posted = [m for m in bot_messages(fake)[before:] if not m.deleted]
    assert len(posted) == 1 and [a.filename for a in posted[0].attachments] == ["jukebot_sample_4.ogg"]
    info = await store.get_sample_info(4)
    assert info.message_id == posted[0].id and info.posted and info.message_parts is None
