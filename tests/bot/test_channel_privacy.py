"""Samples and jobs made in a channel stay with those who may read it: a member who cannot see
#music neither re-posts, continues, upsamples, votes on nor curates its samples from another channel,
and the listings (/top, /history, /curate user:/top:) leave them out for that member. A sample's maker
always may use it; a deleted channel's samples stay the server's, an archived thread's stay its
channel's. Decided from Discord's permissions, the bot's cache for other channels than the
interaction's own."""

from __future__ import annotations

import discord

from bot.bot import JukeBot
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord, FakeMessage, FakeUser, InteractionRecord
from tests.bot.harness import PlayedWorker, answer_of, job_count, make_bot, reply_of, sqlite_store
from tests.bot.test_curate import final_reply
from tests.waiting import wait_until

__all__ = ["sqlite_store"]

VIEW = discord.Permissions(view_channel=True).value
CHANNEL_LOOKUP = "/channels/{channel_id}"


def hidden_sample(sample_id: int) -> str:
    return (
        f"Sample #{sample_id} was made in a channel you cannot see; you can only use samples made in "
        "channels you can read, and your own."
    )


async def hidden_from(fake: FakeDiscord, bot: JukeBot, member: str, channel: str) -> FakeUser:
    """Take View Channel from `member` in `channel`, as a moderator does while the bot runs: Discord
    tells the bot (CHANNEL_UPDATE), whose cache then has the overwrite."""
    user, target = fake.user(member), fake.channel(channel)
    target.member_overwrites[user.id] = (0, VIEW)
    await fake.dispatch("CHANNEL_UPDATE", target.payload())

    async def known() -> bool:
        cached = bot.get_channel(target.id)
        assert isinstance(cached, discord.TextChannel)
        return cached.overwrites_for(discord.Object(user.id)).view_channel is False

    await wait_until(known, within=10.0, what=f"the bot to know {member} cannot see #{channel}")
    return user


async def made(store: JobStore, fake: FakeDiscord, user: str, channel_id: int, n: int = 1) -> list[int]:
    """A job by `user` in `channel_id`, played to success with `n` samples."""
    await store.enqueue(
        kind="generate",
        model="5b",
        params={"artist": "queen", "n_samples": n},
        channel_id=channel_id,
        user_id=fake.user(user).id,
        guild_id=fake.default_guild.id,
    )
    worker = PlayedWorker(store)
    return await worker.complete(await worker.claim(), n=n, full=False)


async def posted(fake: FakeDiscord, record: InteractionRecord) -> FakeMessage:
    """The public answer to an interaction (a re-posted sample, /top), once given."""
    message = await fake.wait_for(lambda: answer_of(record))
    assert not message.ephemeral, message.content
    return message


async def test_a_sample_of_a_channel_a_member_cannot_see_is_refused_to_them_everywhere(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    alice = await hidden_from(fake, bot, "alice", "music")
    bob, moderator = fake.user("bob"), fake.user("moderator")
    music = fake.channel("music")
    (hidden,) = await made(store, fake, "bob", music.id)
    (own,) = await made(store, fake, "alice", music.id)  # hers, from before she lost the channel

    for command, options in (
        ("sample", {"id": hidden}),
        ("continue", {"sample": hidden}),
        ("upsample", {"sample": hidden}),
    ):
        refused = await fake.invoke_command(command, options, user=alice)
        assert await reply_of(fake, refused) == hidden_sample(hidden), command

    # Bob, who reads #music, posts it in #general: its buttons refuse her too.
    message = await posted(fake, await fake.invoke_command("sample", {"id": hidden}, user=bob))
    assert message.attachments
    for button in ("vote", "continue", "upsample"):
        clicked = await fake.click(message, f"jukebot:{button}:{hidden}", user=alice)
        assert await reply_of(fake, clicked) == hidden_sample(hidden), button
        assert clicked.modal is None  # no Continue form to fill in for nothing
    assert await store.vote_count(hidden) == 0
    assert await job_count(store) == 2  # nothing queued for her

    # Those who read #music may; her own sample stays hers.
    await fake.click(message, f"jukebot:vote:{hidden}", user=moderator)
    await fake.wait_for(lambda: message.buttons[0]["label"] == "👍 1")
    assert (await posted(fake, await fake.invoke_command("sample", {"id": own}, user=alice))).attachments
    assert fake.calls("GET", CHANNEL_LOOKUP) == []  # decided from the bot's cache, not asked of Discord


async def test_listings_leave_out_what_a_member_cannot_see(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    bot = await bot_runner.start(make_bot(fake, store))
    alice = await hidden_from(fake, bot, "alice", "music")
    bob = fake.user("bob")
    general, music = fake.channel("general"), fake.channel("music")
    first, second = await made(store, fake, "bob", general.id, n=2)  # job 1
    (hidden,) = await made(store, fake, "bob", music.id)  # job 2
    for voter in range(3):  # the most voted of all
        await store.toggle_vote(hidden, voter)

    seen_by_alice = (
        await posted(fake, await fake.invoke_command("top", {"period": "all"}, user=alice))
    ).content
    assert f"Sample #{first} " in seen_by_alice and f"Sample #{second} " in seen_by_alice, seen_by_alice
    assert f"Sample #{hidden} " not in seen_by_alice and seen_by_alice.startswith(
        f"**Top samples of all time**\n1. Sample #{second} · 👍 0"
    ), seen_by_alice
    seen_by_bob = (await posted(fake, await fake.invoke_command("top", {"period": "all"}, user=bob))).content
    assert f"1. Sample #{hidden} · 👍 3" in seen_by_bob, seen_by_bob

    history = await reply_of(fake, await fake.invoke_command("history", {"user": bob}, user=alice))
    assert "• Job #1 " in history and "• Job #2 " not in history, history
    own = await reply_of(fake, await fake.invoke_command("history", user=bob))
    assert "• Job #1 " in own and "• Job #2 · generate · 5b · queen / unknown · succeeded" in own, own

    async def curate(options: dict[str, object]) -> str:
        return await final_reply(fake, await fake.invoke_command("curate", options, user=alice))

    assert await curate({"job": 2}) == (
        "Job #2 was made in a channel you cannot see; you can only use jobs made in channels you can "
        "read, and your own."
    )
    assert await curate({"samples": f"{first}, {hidden}"}) == (
        f"Sample #{hidden} was made in a channel you cannot see; you can only curate samples made in "
        "channels you can read, and your own."
    )
    for selection in ({"top": "all"}, {"user": bob}):  # the top first: the piece is a sample too
        assert (await curate(selection)).startswith("Done: sample #"), selection
        piece = (await store.recent_jobs(alice.id))[0]
        assert sorted(piece.params["curation"]["sample_ids"]) == [first, second], selection


async def test_a_deleted_channels_samples_stay_the_servers_and_an_archived_threads_stay_its_channels(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake, store = fake_discord, sqlite_store
    # Archived before the bot starts: a thread the bot's cache lacks, as after a day without messages.
    thread = fake.add_thread(fake.channel("music"), "jam")
    thread.archived = True
    bot = await bot_runner.start(make_bot(fake, store))
    alice = await hidden_from(fake, bot, "alice", "music")
    deleted_channel = fake._snowflake()  # an id Discord no longer knows
    (from_deleted,) = await made(store, fake, "bob", deleted_channel)
    (from_thread,) = await made(store, fake, "bob", thread.id)

    for _ in range(2):
        shown = await posted(fake, await fake.invoke_command("sample", {"id": from_deleted}, user=alice))
        assert shown.attachments
    refused = await fake.invoke_command("sample", {"id": from_thread}, user=alice)
    assert await reply_of(fake, refused) == hidden_sample(from_thread)
    moderator = fake.user("moderator")  # reads #music
    assert (
        await posted(fake, await fake.invoke_command("sample", {"id": from_thread}, user=moderator))
    ).attachments
    # Discord was asked once about each channel the cache lacks, whatever used them since
    asked = sorted(call.path.rsplit("/", 1)[-1] for call in fake.calls("GET", CHANNEL_LOOKUP))
    assert asked == sorted([str(deleted_channel), str(thread.id)])
