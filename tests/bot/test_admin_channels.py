"""`/jukebot-admin channels` edits the allow-list in force, also when it comes from the bot's
JUKEBOT_ALLOWED_CHANNELS setting; "allow everywhere" overrides that setting in the server.

Each test runs on SQLite and Postgres (`db_url`), with the real bot against the fake Discord.
"""

from __future__ import annotations

import discord

from bot.bot import JukeBot
from storage.records import GuildSettings
from storage.store import JobStore
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeChannel, FakeDiscord
from tests.bot.harness import make_bot, make_settings, reply_of

FORUM, VOICE, STAGE = (
    discord.ChannelType.forum.value,
    discord.ChannelType.voice.value,
    discord.ChannelType.stage_voice.value,
)


async def _channels(fake: FakeDiscord, action: str, channel: FakeChannel | None = None) -> str:
    options: dict[str, object] = {"action": action}
    if channel is not None:
        options["channel"] = channel
    return await reply_of(
        fake, await fake.invoke_command("jukebot-admin channels", options, user=fake.user("mod"))
    )


async def _jukebox_in(fake: FakeDiscord, channel: FakeChannel) -> str:
    return await reply_of(fake, await fake.invoke_command("jukebox", {"samples": 1}, channel=channel))


async def test_channels_edits_the_allow_list_from_the_setting(
    fake_discord: FakeDiscord, bot_runner: BotRunner, db_store: JobStore
) -> None:
    fake, store = fake_discord, db_store
    general, music = fake.channel("general"), fake.channel("music")
    guild_id = fake.default_guild.id
    await bot_runner.start(make_bot(fake, store, make_settings(allowed_channels=[general.id])))

    refused = await _channels(fake, "remove", general)  # it is on the list in force, the only one
    assert refused.startswith(f"<#{general.id}> is the only allowed channel: without it the jukebox")
    assert await store.get_guild_settings(guild_id) == GuildSettings(guild_id=guild_id)

    added = await _channels(fake, "allow", music)
    assert added.endswith(f"Allowed channels: <#{general.id}>, <#{music.id}>")
    assert (await store.get_guild_settings(guild_id)).allowed_channel_ids == (general.id, music.id)
    assert (await _jukebox_in(fake, general)).startswith("Queued as job #")  # still allowed
    assert (await _jukebox_in(fake, music)).startswith("Queued as job #")

    removed = await _channels(fake, "remove", general)
    assert removed.endswith(f"Allowed channels: <#{music.id}>")
    assert (await _jukebox_in(fake, general)).startswith("Jukebox is not available in this channel.")


async def test_allow_everywhere_overrides_the_setting_and_survives_a_restart(
    fake_discord: FakeDiscord, bot_runner: BotRunner, db_store: JobStore
) -> None:
    fake, store = fake_discord, db_store
    general, music = fake.channel("general"), fake.channel("music")
    guild_id = fake.default_guild.id
    settings = make_settings(allowed_channels=[general.id])
    bot = await bot_runner.start(make_bot(fake, store, settings))
    assert (await _jukebox_in(fake, music)).startswith("Jukebox is not available in this channel.")

    everywhere = await _channels(fake, "all")
    assert everywhere.endswith("Allowed channels: every channel")
    # Stored as an empty list ("every channel here"), not as no override ("the bot's setting").
    assert (await store.get_guild_settings(guild_id)).allowed_channel_ids == ()
    await bot_runner.stop(bot)
    await bot_runner.start(make_bot(fake, store, settings))
    assert (await _jukebox_in(fake, music)).startswith("Queued as job #")
    show = await reply_of(fake, await fake.invoke_command("jukebot-admin show", user=fake.user("mod")))
    assert show.endswith("Allowed channels: every channel")

    # From every channel, allowing one makes a list of that one.
    assert (await _channels(fake, "allow", music)).endswith(f"Allowed channels: <#{music.id}>")
    assert (await store.get_guild_settings(guild_id)).allowed_channel_ids == (music.id,)
    # No override (a server that never used the command) is the bot's setting again.
    await store.set_guild_settings(GuildSettings(guild_id=guild_id, allowed_channel_ids=None))
    assert (await store.get_guild_settings(guild_id)).allowed_channel_ids is None
    assert (await _jukebox_in(fake, music)).startswith("Jukebox is not available in this channel.")


async def test_the_settings_channels_of_other_servers_are_not_copied_into_this_ones_list(
    fake_discord: FakeDiscord, bot_runner: BotRunner, db_store: JobStore
) -> None:
    """JUKEBOT_ALLOWED_CHANNELS is one list for every server. Editing it in another server copied the
    first server's channel into that server's list: removing its own last channel then passed the
    "would leave it empty" guard and closed the server (/jukebox said "use it in" a channel it has not)."""
    fake, store = fake_discord, db_store
    general = fake.channel("general")
    other = fake.add_guild("Other Server", channels=("lobby", "songs"))
    songs = fake.channel("songs", other)
    fake.add_member(other, fake.user("mod"), permissions=discord.Permissions(manage_guild=True).value)
    settings = make_settings(allowed_channels=[general.id])
    await bot_runner.start(JukeBot(settings, store, sync_guild_ids=[fake.default_guild.id, other.id]))

    async def channels(action: str) -> str:
        options = {"action": action, "channel": songs}
        command = await fake.invoke_command(
            "jukebot-admin channels", options, user=fake.user("mod"), guild=other, channel=songs
        )
        return await reply_of(fake, command)

    assert (await channels("allow")).endswith(f"Allowed channels: <#{songs.id}>")
    assert (await store.get_guild_settings(other.id)).allowed_channel_ids == (songs.id,)
    assert (await channels("remove")).startswith(f"<#{songs.id}> is the only allowed channel")
    assert (await store.get_guild_settings(other.id)).allowed_channel_ids == (songs.id,)


async def test_a_server_the_settings_channels_leave_out_is_told_so_not_sent_to_another_servers_channel(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """JUKEBOT_ALLOWED_CHANNELS naming only the first server's channels: in the other, /jukebox said
    "Use it in <#…>", a channel of another server its members cannot open, and `show` listed it as
    this server's allow-list."""
    fake, store = fake_discord, sqlite_store
    general = fake.channel("general")
    other = fake.add_guild("Other Server", channels=("lobby",))
    lobby = fake.channel("lobby", other)
    fake.add_member(other, fake.user("alice"))
    fake.add_member(other, fake.user("mod"), permissions=discord.Permissions(manage_guild=True).value)
    settings = make_settings(allowed_channels=[general.id])
    await bot_runner.start(JukeBot(settings, store, sync_guild_ids=[fake.default_guild.id, other.id]))

    async def in_other(command: str, options: dict[str, object], user: str) -> str:
        invoked = await fake.invoke_command(
            command, options, user=fake.user(user), guild=other, channel=lobby
        )
        return await reply_of(fake, invoked)

    refused = await in_other("jukebox", {"samples": 1}, "alice")
    assert refused == (
        "Jukebox is not available in any channel of this server: the bot's operator allows it only in "
        "channels of other servers (JUKEBOT_ALLOWED_CHANNELS). A server admin can allow channels here "
        "with `/jukebot-admin channels`."
    )
    shown = await in_other("jukebot-admin show", {}, "mod")
    assert shown.endswith(
        "Allowed channels: none here (the bot's JUKEBOT_ALLOWED_CHANNELS names only other servers' channels)"
    ), shown
    assert (await in_other("jukebot-admin channels", {"action": "allow", "channel": lobby}, "mod")).endswith(
        f"Allowed channels: <#{lobby.id}>"
    )
    assert (await in_other("jukebox", {"samples": 1}, "alice")).startswith("Queued as job #")
    # In the first server, the setting's channel is named as before.
    music = fake.channel("music")
    assert (await _jukebox_in(fake, music)) == (
        f"Jukebox is not available in this channel. Use it in <#{general.id}>."
    )


async def test_a_forum_can_be_allowed_and_its_posts_then_take_jobs(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """The channel option took text and news channels only: once a server had an allow-list, a
    forum (whose posts count as it) could never be put on it, nor a voice or stage channel's chat."""
    fake, store = fake_discord, sqlite_store
    forum = fake.channel("music")
    forum.type = FORUM
    post = fake.add_thread(forum, "my song")
    await bot_runner.start(make_bot(fake, store))
    option = next(
        option
        for command in fake.synced_commands(fake.default_guild).values()
        if command["name"] == "jukebot-admin"
        for sub in command["options"]
        if sub["name"] == "channels"
        for option in sub["options"]
        if option["name"] == "channel"
    )
    assert {FORUM, VOICE, STAGE} <= set(option["channel_types"]), option

    assert (await _channels(fake, "allow", fake.channel("general"))).endswith(
        f"Allowed channels: <#{fake.channel('general').id}>"
    )
    assert (await _jukebox_in(fake, post)).startswith("Jukebox is not available in this channel.")
    assert (await _channels(fake, "allow", forum)).endswith(f"<#{forum.id}>")
    assert (await _jukebox_in(fake, post)).startswith("Queued as job #")
