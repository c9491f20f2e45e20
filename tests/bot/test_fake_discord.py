"""Tests of the fake Discord harness, driven by a tiny throwaway bot using the real discord.py client."""

from __future__ import annotations

import asyncio
import io
import re
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands

from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import (
    CALLBACK_AUTOCOMPLETE,
    CALLBACK_DEFERRED_MESSAGE,
    CALLBACK_MESSAGE,
    CALLBACK_MODAL,
    CALLBACK_UPDATE,
    BotNotConnectedError,
    ComponentNotFoundError,
    FakeDiscord,
    FakeMessage,
    InteractionNotAcknowledgedError,
    InvalidOptionError,
    UnknownCommandError,
    Upload,
)

GENRES = ["rock", "pop", "jazz", "blues", "metal", "folk", "funk", "soul", "punk", "reggae"] * 4
OGG_MAGIC = b"OggS"


class ToggleButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"toggle:(?P<key>[a-z0-9]+)"):
    """A persistent button whose state lives in the bot's `store` (standing in for the database)."""

    def __init__(self, key: str) -> None:
        super().__init__(discord.ui.Button(label="toggle", custom_id=f"toggle:{key}"))
        self.key = key

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> ToggleButton:
        return cls(match["key"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        store: dict[str, bool] = interaction.client.store  # type: ignore[attr-defined]
        store[self.key] = not store.get(self.key, False)
        await interaction.response.edit_message(content=f"{self.key} is {'on' if store[self.key] else 'off'}")


class LyricsModal(discord.ui.Modal, title="Lyrics"):
    lyrics: discord.ui.TextInput[LyricsModal] = discord.ui.TextInput(
        label="Lyrics", custom_id="lyrics", style=discord.TextStyle.paragraph, max_length=100
    )

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        await interaction.response.send_message(f"got {len(self.lyrics.value)} characters", ephemeral=True)


class ThrowawayBot(commands.Bot):
    def __init__(self, store: dict[str, bool]) -> None:
        super().__init__(command_prefix=commands.when_mentioned, intents=discord.Intents.default())
        self.store = store
        self.head_length: int | None = None

        @self.tree.command(description="Upload a clip")
        async def upload(
            interaction: discord.Interaction[ThrowawayBot], clip: discord.Attachment, note: str = ""
        ) -> None:
            await interaction.response.defer(thinking=True)
            async with aiohttp.ClientSession() as session:
                async with session.head(clip.url) as head:
                    self.head_length = int(head.headers["Content-Length"])
                async with session.get(clip.url, headers={"Range": "bytes=0-3"}) as first:
                    magic = await first.read()
            data = await clip.read()
            await interaction.followup.send(f"{len(data)} bytes, ogg={magic == OGG_MAGIC} {note}".strip())
            assert isinstance(interaction.channel, discord.TextChannel)
            view = discord.ui.View(timeout=None).add_item(ToggleButton("k1"))
            posted = await interaction.channel.send(
                "processing", file=discord.File(io.BytesIO(data[::-1]), filename="reversed.ogg"), view=view
            )
            await posted.edit(content="done")

        @self.tree.command(description="Pick a genre")
        async def pick(interaction: discord.Interaction[ThrowawayBot], genre: str) -> None:
            await interaction.response.send_message(f"picked {genre}")

        @pick.autocomplete("genre")
        async def pick_genre(
            interaction: discord.Interaction[ThrowawayBot], current: str
        ) -> list[app_commands.Choice[str]]:
            matches = [g for g in GENRES if current.lower() in g]
            return [app_commands.Choice(name=g, value=g) for g in matches][:25]

        @self.tree.command(description="Write lyrics")
        async def lyrics(interaction: discord.Interaction[ThrowawayBot]) -> None:
            await interaction.response.send_modal(LyricsModal())

        @self.tree.command(description="Count")
        @app_commands.describe(n="how many")
        async def count(
            interaction: discord.Interaction[ThrowawayBot], n: app_commands.Range[int, 1, 5]
        ) -> None:
            await interaction.response.defer()
            await interaction.followup.send(f"counted {n}", ephemeral=True)  # after a public defer: public
            await interaction.followup.send("second, really ephemeral", ephemeral=True)

        @self.tree.command(description="Admins only")
        @app_commands.default_permissions(manage_guild=True)
        async def admin(interaction: discord.Interaction[ThrowawayBot]) -> None:
            await interaction.response.send_message("admin ok", ephemeral=True)

        @self.tree.command(description="Exercise the other routes")
        async def misc(interaction: discord.Interaction[ThrowawayBot]) -> None:
            await interaction.response.send_message(
                "first", file=discord.File(io.BytesIO(b"1"), filename="one.mp3")
            )
            original = await interaction.original_response()
            assert original.interaction_metadata is not None
            assert original.interaction_metadata.user.id == interaction.user.id
            await interaction.edit_original_response(content="first, edited", attachments=[])
            extra = await interaction.followup.send("extra", wait=True)
            await extra.edit(content="extra, edited")
            assert isinstance(interaction.channel, discord.TextChannel)
            reply = await original.reply("a reply")
            await reply.add_reaction("👍")
            fetched = await interaction.channel.fetch_message(reply.id)
            history = [m.id async for m in interaction.channel.history(limit=10)]
            assert fetched.reference is not None and history[0] == reply.id
            await interaction.user.send("dm")
            await interaction.channel.typing()
            await extra.delete()

        @self.tree.command(description="Say something after thinking")
        async def say(
            interaction: discord.Interaction[ThrowawayBot], text: str, as_embed: bool = False
        ) -> None:
            await interaction.response.defer(ephemeral=True, thinking=True)
            try:
                if as_embed:
                    await interaction.followup.send(embed=discord.Embed(description=text), ephemeral=True)
                else:
                    await interaction.followup.send(text, ephemeral=True)
            except discord.HTTPException:
                pass  # the test reads Discord's answer from the fake

        @self.tree.command(description="Answers twice")
        async def twice(interaction: discord.Interaction[ThrowawayBot]) -> None:
            await interaction.response.defer()
            try:
                await interaction.response.send_message("again")  # discord.py refuses locally
            except discord.InteractionResponded:
                self.store["refused"] = True
            await interaction.client.http.request(
                discord.http.Route(
                    "POST", "/interactions/{i}/{t}/callback", i=interaction.id, t=interaction.token
                ),
                json={"type": 4, "data": {"content": "again"}},
            )

    async def setup_hook(self) -> None:
        self.add_dynamic_items(ToggleButton)
        await self.tree.sync()


async def _posted_message(fake: FakeDiscord) -> FakeMessage:
    general = fake.channel("general")
    return await fake.wait_for(
        lambda: next(
            (m for m in fake.channel_messages(general) if m.attachments and m.content == "done"), None
        )
    )


async def test_bot_connects_becomes_ready_and_syncs_commands(
    fake_discord: FakeDiscord, bot_runner: BotRunner
) -> None:
    bot = await bot_runner.start(ThrowawayBot({}))
    assert bot.user is not None and bot.user.id == fake_discord.bot_user.id
    guild = bot.get_guild(fake_discord.default_guild.id)
    assert guild is not None and {c.name for c in guild.text_channels} == {"general", "music"}
    assert guild.me is not None and guild.me.guild_permissions.attach_files
    synced = fake_discord.synced_commands()
    assert set(synced) == {"upload", "pick", "lyrics", "count", "admin", "misc", "say", "twice"}
    assert [o["name"] for o in synced["upload"]["options"]] == ["clip", "note"]
    assert synced["upload"]["options"][0]["type"] == 11  # attachment
    assert synced["pick"]["options"][0]["autocomplete"] is True
    assert fake_discord.command_syncs == [(None, list(synced))]
    # The task registers its listener on the loop's next turn, before the frame can arrive over the socket.
    seen = asyncio.create_task(bot.wait_for("message", timeout=5))
    await fake_discord.post_user_message(fake_discord.channel("music"), fake_discord.user("bob"), "hello")
    message = await seen
    assert message.content == "hello" and message.author.id == fake_discord.user("bob").id
    assert fake_discord.unknown_requests == [] and fake_discord.rejections == []


async def test_command_with_attachment_defers_downloads_and_posts_files(
    fake_discord: FakeDiscord, bot_runner: BotRunner
) -> None:
    bot = await bot_runner.start(ThrowawayBot({}))
    clip = OGG_MAGIC + bytes(range(256)) * 40
    alice = fake_discord.user("alice")
    record = await fake_discord.invoke_command(
        "upload", {"note": "hi"}, user=alice, attachments={"clip": Upload("a.ogg", clip)}
    )
    assert record.response_type == CALLBACK_DEFERRED_MESSAGE and record.ack_latency is not None
    await fake_discord.wait_for(lambda: record.original is not None and not record.original.loading)
    assert record.original is not None and record.original.content == f"{len(clip)} bytes, ogg=True hi"
    assert record.followups == []  # the first followup after a defer fills the "thinking" message
    posted = await _posted_message(fake_discord)
    (attachment,) = posted.attachments
    assert attachment.data == clip[::-1] and attachment.filename == "reversed.ogg"
    assert attachment.content_type == "audio/ogg"
    assert [r.content for r in posted.revisions] == ["processing", "done"] and posted.edited_at is not None
    assert posted.custom_ids == ["toggle:k1"]
    assert bot.head_length == len(clip)
    downloads = fake_discord.calls(route="/attachments/{channel_id}/{attachment_id}/{filename}")
    assert [(r.method, r.headers.get("Range"), r.status) for r in downloads] == [
        ("HEAD", None, 200),
        ("GET", "bytes=0-3", 206),
        ("GET", None, 200),
    ]
    multipart = fake_discord.calls("POST", "/channels/{channel_id}/messages")
    assert multipart[0].headers["Content-Type"].startswith("multipart/form-data")
    assert fake_discord.unknown_requests == [] and fake_discord.rejections == []


async def test_dynamic_button_toggles_state(fake_discord: FakeDiscord, bot_runner: BotRunner) -> None:
    store: dict[str, bool] = {}
    await bot_runner.start(ThrowawayBot(store))
    await fake_discord.invoke_command("upload", attachments={"clip": Upload("a.ogg", OGG_MAGIC)})
    posted = await _posted_message(fake_discord)
    first = await fake_discord.click(posted, "toggle:k1", user=fake_discord.user("bob"))
    assert first.response_type == CALLBACK_UPDATE and store == {"k1": True}
    assert posted.content == "k1 is on" and posted.attachments  # an update keeps the file
    await fake_discord.click(posted.id, "toggle:k1")
    assert store == {"k1": False} and posted.content == "k1 is off"
    with pytest.raises(ComponentNotFoundError, match="toggle:k1"):
        await fake_discord.click(posted, "toggle:nope")


async def test_autocomplete_returns_choices(fake_discord: FakeDiscord, bot_runner: BotRunner) -> None:
    await bot_runner.start(ThrowawayBot({}))
    choices = await fake_discord.autocomplete("pick", "genre", "o")
    assert 0 < len(choices) <= 25 and all("o" in c["name"] for c in choices)
    assert await fake_discord.autocomplete("pick", "genre", "jaz") == [{"name": "jazz", "value": "jazz"}] * 4
    record = list(fake_discord.interactions.values())[-1]
    assert record.response_type == CALLBACK_AUTOCOMPLETE
    with pytest.raises(InvalidOptionError, match="autocomplete"):
        await fake_discord.autocomplete("upload", "note", "x")


async def test_modal_opens_and_is_submitted(fake_discord: FakeDiscord, bot_runner: BotRunner) -> None:
    await bot_runner.start(ThrowawayBot({}))
    opened = await fake_discord.invoke_command("lyrics")
    assert (
        opened.response_type == CALLBACK_MODAL
        and opened.modal is not None
        and opened.modal["title"] == "Lyrics"
    )
    with pytest.raises(InvalidOptionError, match="length"):
        await fake_discord.submit_modal(opened, {"lyrics": "x" * 101})
    submitted = await fake_discord.submit_modal(opened, {"lyrics": "hey jude"})
    assert submitted.response_type == CALLBACK_MESSAGE
    assert submitted.original is not None and submitted.original.ephemeral
    assert submitted.original.content == "got 8 characters"


async def test_restart_keeps_messages_and_old_buttons_work(
    fake_discord: FakeDiscord, bot_runner: BotRunner
) -> None:
    store: dict[str, bool] = {}
    first_bot = await bot_runner.start(ThrowawayBot(store))
    await fake_discord.invoke_command("upload", attachments={"clip": Upload("a.ogg", OGG_MAGIC)})
    posted = await _posted_message(fake_discord)
    await bot_runner.stop(first_bot)
    assert fake_discord.live_sessions == []
    await bot_runner.start(ThrowawayBot(store))  # a new process: same store (database), same fake server
    assert fake_discord.message(posted.id) is posted
    clicked = await fake_discord.click(posted, "toggle:k1")
    assert clicked.response_type == CALLBACK_UPDATE and store == {"k1": True} and posted.content == "k1 is on"
    assert len(fake_discord.sessions) == 2


async def test_gateway_resume_after_reconnect_request(
    fake_discord: FakeDiscord, bot_runner: BotRunner
) -> None:
    bot = await bot_runner.start(ThrowawayBot({}))
    (session,) = fake_discord.sessions.values()
    await fake_discord.request_reconnect()
    await fake_discord.wait_for(lambda: session.resumed == 1 and session.live)
    assert len(fake_discord.sessions) == 1  # resumed, not a new IDENTIFY
    assert [m["op"] for m in fake_discord.gateway_received] == [2, 6]
    assert bot.is_ready() and not bot.is_closed()
    record = await fake_discord.invoke_command("pick", {"genre": "rock"})
    assert record.original is not None and record.original.content == "picked rock"


async def test_deferred_then_followups_follow_discord_visibility_rules(
    fake_discord: FakeDiscord, bot_runner: BotRunner
) -> None:
    await bot_runner.start(ThrowawayBot({}))
    record = await fake_discord.invoke_command("count", {"n": 3})
    await fake_discord.wait_for(lambda: len(record.followups) == 1)
    assert (
        record.original is not None
        and not record.original.ephemeral
        and record.original.content == "counted 3"
    )
    assert record.followups[0].ephemeral
    assert [m.content for m in fake_discord.channel_messages(fake_discord.channel("general"))] == [
        "counted 3"
    ]


async def test_options_are_checked_against_the_synced_schema(
    fake_discord: FakeDiscord, bot_runner: BotRunner
) -> None:
    await bot_runner.start(ThrowawayBot({}))
    with pytest.raises(InvalidOptionError, match=r"outside \[1, 5\]"):
        await fake_discord.invoke_command("count", {"n": 9})
    with pytest.raises(UnknownCommandError, match="no option"):
        await fake_discord.invoke_command("count", {"m": 1})
    with pytest.raises(InvalidOptionError, match="required"):
        await fake_discord.invoke_command("upload")
    with pytest.raises(UnknownCommandError, match="was not synced"):
        await fake_discord.invoke_command("nope")
    with pytest.raises(InvalidOptionError, match="lacks"):
        await fake_discord.invoke_command("admin", user=fake_discord.user("alice"))
    record = await fake_discord.invoke_command("admin", user=fake_discord.user("mod"))
    assert record.original is not None and record.original.content == "admin ok"


async def test_discord_errors_rate_limits_and_unknown_routes(
    fake_discord: FakeDiscord, bot_runner: BotRunner
) -> None:
    bot = await bot_runner.start(ThrowawayBot({}))
    channel = bot.get_channel(fake_discord.channel("general").id)
    assert isinstance(channel, discord.TextChannel)
    with pytest.raises(discord.HTTPException) as too_long:
        await channel.send("x" * 2001)
    assert too_long.value.code == 50035 and "2000" in str(too_long.value)
    fake_discord.default_guild.attachment_size_limit = 10
    with pytest.raises(discord.HTTPException) as too_big:
        await channel.send(file=discord.File(io.BytesIO(b"x" * 11), filename="big.ogg"))
    assert too_big.value.code == 40005
    fake_discord.fail_next("POST", "/channels/{channel_id}/messages", status=429, retry_after=0.01)
    message = await channel.send("after a rate limit")
    assert [r.status for r in fake_discord.calls("POST", "/channels/{channel_id}/messages")][-2:] == [
        429,
        200,
    ]
    assert fake_discord.message(message.id).content == "after a rate limit"
    assert fake_discord.unknown_requests == []
    with pytest.raises(discord.NotFound):
        await bot.http.request(discord.http.Route("GET", "/stickers/{sticker_id}", sticker_id=1))
    assert [r.path for r in fake_discord.unknown_requests] == ["/api/v10/stickers/1"]


async def test_a_held_request_waits_until_the_test_releases_it(
    fake_discord: FakeDiscord, bot_runner: BotRunner
) -> None:
    bot = await bot_runner.start(ThrowawayBot({}))
    channel = bot.get_channel(fake_discord.channel("general").id)
    assert isinstance(channel, discord.TextChannel)
    held = fake_discord.hold("POST", "/channels/{channel_id}/messages", after=1)
    await channel.send("first")  # let through
    second = asyncio.create_task(channel.send("second"))
    await fake_discord.wait_for(lambda: held.arrived)
    contents = [m.content for m in fake_discord.channel_messages(fake_discord.channel("general"))]
    assert not second.done() and contents[-1] == "first"
    held.release()
    assert fake_discord.message((await second).id).content == "second"
    await channel.send("third")  # the hold is used up
    assert fake_discord.rejections == []

    # A handled hold: Discord has posted it, the sender waits for the answer.
    answer = fake_discord.hold("POST", "/channels/{channel_id}/messages", handled=True)
    fourth = asyncio.create_task(channel.send("fourth"))
    await fake_discord.wait_for(lambda: answer.arrived)
    contents = [m.content for m in fake_discord.channel_messages(fake_discord.channel("general"))]
    assert not fourth.done() and contents[-1] == "fourth"
    answer.release()
    assert fake_discord.message((await fourth).id).content == "fourth"


async def test_a_message_sent_again_with_its_nonce_is_not_posted_twice(
    fake_discord: FakeDiscord, bot_runner: BotRunner
) -> None:
    bot = await bot_runner.start(ThrowawayBot({}))
    channel = bot.get_channel(fake_discord.channel("general").id)
    assert isinstance(channel, discord.TextChannel)
    once = await channel.send("once", nonce="sample-1-0")  # discord.py sets enforce_nonce
    again = await channel.send("once", nonce="sample-1-0")
    other = await channel.send("other", nonce="sample-2-0")
    assert again.id == once.id != other.id
    contents = [m.content for m in fake_discord.channel_messages(fake_discord.channel("general"))]
    assert contents.count("once") == 1
    with pytest.raises(discord.HTTPException) as too_long:
        await channel.send("x", nonce="n" * 26)
    assert too_long.value.code == 50035


async def test_attachment_route_serves_ranges(fake_discord: FakeDiscord) -> None:
    attachment = fake_discord._store_upload(
        fake_discord.channel("general").id, Upload("x.bin", bytes(range(10)))
    )
    async with aiohttp.ClientSession() as session:
        async with session.get(attachment.url, headers={"Range": "bytes=-3"}) as tail:
            assert tail.status == 206 and await tail.read() == bytes([7, 8, 9])
            assert tail.headers["Content-Range"] == "bytes 7-9/10"
        async with session.get(attachment.url, headers={"Range": "bytes=20-"}) as beyond:
            assert beyond.status == 416
        async with session.head(attachment.url) as head:
            assert head.status == 200 and head.headers["Content-Length"] == "10"


async def test_webhook_channel_and_dm_routes(fake_discord: FakeDiscord, bot_runner: BotRunner) -> None:
    await bot_runner.start(ThrowawayBot({}))
    record = await fake_discord.invoke_command("misc")
    await fake_discord.wait_for(lambda: record.followups and record.followups[0].deleted)
    original = record.original
    assert original is not None and [r.content for r in original.revisions] == ["first", "first, edited"]
    assert original.revisions[0].attachments[0].content_type == "audio/mpeg" and original.attachments == []
    (extra,) = record.followups
    assert extra.content == "extra, edited" and extra.deleted
    reply = fake_discord.channel_messages(fake_discord.channel("general"))[-1]
    assert reply.replied_to == original.id and reply.reactions == {"👍": {fake_discord.bot_user.id}}
    (dm,) = [m for m in fake_discord.messages.values() if fake_discord.channels[m.channel_id].type == 1]
    assert dm.content == "dm" and fake_discord.channels[dm.channel_id].recipients == [
        fake_discord.user("alice")
    ]
    assert fake_discord.unknown_requests == [] and fake_discord.rejections == []


async def test_unanswered_and_double_answered_interactions_are_reported(
    fake_discord: FakeDiscord, bot_runner: BotRunner
) -> None:
    store: dict[str, bool] = {}
    bot = await bot_runner.start(ThrowawayBot(store))
    record = await fake_discord.invoke_command("twice")
    await fake_discord.wait_for(lambda: fake_discord.rejections)
    (rejected,) = fake_discord.rejections
    assert rejected.status == 400 and rejected.error is not None and rejected.error["code"] == 40060
    assert store == {"refused": True} and record.response_type == CALLBACK_DEFERRED_MESSAGE
    fake_discord.fail_next("POST", "/interactions/{interaction_id}/{token}/callback", status=404, code=10062)
    with pytest.raises(InteractionNotAcknowledgedError, match="'pick'"):
        await fake_discord.invoke_command("pick", {"genre": "rock"}, timeout_s=0.5)
    await bot_runner.stop(bot)
    with pytest.raises(BotNotConnectedError):
        await fake_discord.invoke_command("pick", {"genre": "rock"})


@pytest.mark.parametrize(
    ("options", "errors"),
    [
        (
            {"text": "x" * 2001},
            {
                "content": {
                    "_errors": [
                        {"code": "BASE_TYPE_MAX_LENGTH", "message": "Must be 2000 or fewer in length."}
                    ]
                }
            },
        ),
        (
            {"text": "x" * 4097, "as_embed": True},
            {
                "embeds": {
                    "0": {
                        "description": {
                            "_errors": [
                                {
                                    "code": "BASE_TYPE_MAX_LENGTH",
                                    "message": "Must be 4096 or fewer in length.",
                                }
                            ]
                        }
                    }
                }
            },
        ),
    ],
    ids=["content", "embed"],
)
async def test_a_reply_over_discords_limits_is_refused_and_leaves_the_user_waiting(
    fake_discord: FakeDiscord, bot_runner: BotRunner, options: dict[str, Any], errors: dict[str, Any]
) -> None:
    """Discord refuses the followup with 50035 and the deferred response keeps "thinking": the user never
    hears back. (The fake used to end "thinking" first, which hid replies that were too long.)"""
    await bot_runner.start(ThrowawayBot({}))
    record = await fake_discord.invoke_command("say", options)
    await fake_discord.wait_for(lambda: fake_discord.rejections)
    (rejected,) = fake_discord.rejections
    assert rejected.status == 400
    assert rejected.error == {"message": "Invalid Form Body", "code": 50035, "errors": errors}
    assert record.original is not None and record.original.loading and record.original.content == ""
    fitting = await fake_discord.invoke_command("say", {"text": "x" * 2000})
    await fake_discord.wait_for(lambda: fitting.original is not None and not fitting.original.loading)
    assert fitting.original is not None and fitting.original.content == "x" * 2000


async def test_command_definitions_over_discords_limits_are_refused(
    fake_discord: FakeDiscord, bot_runner: BotRunner
) -> None:
    """discord.py checks some of these itself; a raw sync (or a dict the bot builds) meets Discord's."""
    bot = await bot_runner.start(ThrowawayBot({}))
    route = discord.http.Route(
        "PUT", "/applications/{application_id}/commands", application_id=bot.application_id
    )
    option = {"type": 3, "name": "style", "description": "A style"}
    bad = {
        "description": {"name": "x", "description": "d" * 101},
        "choice value": {
            "name": "x",
            "description": "d",
            "options": [option | {"choices": [{"name": "long", "value": "v" * 101}]}],
        },
        "too many options": {
            "name": "x",
            "description": "d",
            "options": [option | {"name": f"o{i}"} for i in range(26)],
        },
        "string length": {"name": "x", "description": "d", "options": [option | {"max_length": 6001}]},
        "sub-command option": {
            "name": "x",
            "description": "d",
            "options": [
                {"type": 1, "name": "sub", "description": "s", "options": [option | {"description": ""}]}
            ],
        },
        "size": {
            "name": "x",
            "description": "d",
            "options": [
                option
                | {"name": f"o{i}", "choices": [{"name": "n" * 100, "value": f"{j}" * 100} for j in range(4)]}
                for i in range(10)
            ],
        },
    }
    for why, command in bad.items():
        with pytest.raises(discord.HTTPException) as refused:
            await bot.http.request(route, json=[command])
        assert refused.value.status == 400 and refused.value.code == 50035, why
    synced = await bot.http.request(route, json=[{"name": "x", "description": "d", "options": [option]}])
    assert [command["name"] for command in synced] == ["x"]


def test_modals_over_discords_limits_are_refused() -> None:
    from tests.bot.fake_discord import DiscordAPIError, _check_modal

    field = {"type": 4, "custom_id": "lyrics", "label": "Lyrics", "style": 2, "max_length": 4000}
    good = {"custom_id": "m", "title": "Lyrics", "components": [{"type": 1, "components": [field]}]}
    _check_modal(good)
    for bad in (
        good | {"title": "t" * 46},
        good | {"components": [{"type": 1, "components": [field | {"max_length": 4001}]}]},
        good | {"components": [{"type": 1, "components": [field | {"label": "l" * 46}]}]},
        good | {"components": [{"type": 1, "components": [field | {"value": "v" * 4001}]}]},
        good | {"components": [{"type": 1, "components": [field]}] * 6},
    ):
        with pytest.raises(DiscordAPIError):
            _check_modal(bad)
