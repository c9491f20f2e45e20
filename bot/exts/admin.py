"""`/jukebot-admin`: per-server limits and allowed channels (needs the Manage Server permission)."""

from __future__ import annotations

import dataclasses
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import actions
from bot.bot import JukeBot
from bot.errors import InvalidRequest, listed
from bot.requests import CHANNEL_LIST_CHARS, MAX_LENGTH_OPTION_SECONDS, MIN_LENGTH_SECONDS, Limits
from storage.records import GuildSettings


def _describe(limits: Limits, guild: discord.Guild | None) -> str:
    here = limits.channels_here(actions.channel_of(guild))
    channels = listed([f"<#{c}>" for c in here], CHANNEL_LIST_CHARS)
    if not limits.allowed_channel_ids:
        channels = "every channel"
    elif not channels:  # the bot's setting names other servers' channels only
        channels = "none here (the bot's JUKEBOT_ALLOWED_CHANNELS names only other servers' channels)"
    return (
        f"Longest song: {limits.max_length_seconds:g} s\n"
        f"Samples per job: {limits.max_samples_per_job}\n"
        f"Running jobs per user: {limits.max_running_jobs_per_user}\n"
        f"Queued jobs per user: {limits.max_queued_jobs_per_user}\n"
        f"Allowed channels: {channels}"
    )


# What each server limit is called, and the setting whose value is its ceiling.
_CEILINGS = {
    "max_length_seconds": ("max_length", "JUKEBOT_MAX_LENGTH_SECONDS"),
    "max_samples_per_job": ("max_samples", "JUKEBOT_MAX_SAMPLES_PER_JOB"),
    "max_running_jobs_per_user": ("max_running", "JUKEBOT_MAX_RUNNING_JOBS_PER_USER"),
    "max_queued_jobs_per_user": ("max_queued", "JUKEBOT_MAX_QUEUED_JOBS_PER_USER"),
}


def _check_within_the_operators(changes: dict[str, object], bot_wide: Limits) -> None:
    """Refuse a limit past the bot's own (its operator's settings): every server shares the operator's
    GPUs, so a server's admin may tighten a limit, not loosen it."""
    over = []
    for name, value in changes.items():
        ceiling = getattr(bot_wide, name)
        if isinstance(value, int | float) and value > ceiling:
            option, setting = _CEILINGS[name]
            over.append(f"`{option}` {value:g} is over this bot's {ceiling:g} ({setting})")
    if over:
        raise InvalidRequest(
            f"Nothing was changed: {'; '.join(over)}. A server may tighten the limits its bot's operator "
            "set, not loosen them."
        )


class Admin(commands.Cog):
    group = app_commands.Group(
        name="jukebot-admin",
        description="Server settings for the jukebox",
        guild_only=True,
        default_permissions=discord.Permissions(manage_guild=True),
    )

    def __init__(self, bot: JukeBot) -> None:
        self.bot = bot

    async def interaction_check(self, interaction: discord.Interaction[Any], /) -> bool:
        """Discord hides these commands from members without Manage Server, but a forged or stale
        interaction still reaches the bot: it checks the permission itself."""
        if not interaction.permissions.manage_guild:
            raise app_commands.MissingPermissions(["manage_guild"])
        return True

    @group.command(name="show", description="Show the limits in this server")
    async def show(self, interaction: discord.Interaction[JukeBot]) -> None:
        guild_id = actions.guild_id_of(interaction)
        # Acknowledged before the database is read: a remote one may take longer than Discord's 3 s.
        await interaction.response.defer(ephemeral=True, thinking=True)
        limits = await self.bot.limits_for(guild_id)
        await interaction.followup.send(_describe(limits, interaction.guild), ephemeral=True)

    @group.command(name="limits", description="Change this server's limits (leave an option out to keep it)")
    @app_commands.describe(
        max_length="Longest song in seconds",
        max_samples="Most samples per job",
        max_running="Most running jobs per user",
        max_queued="Most queued jobs per user",
        reset="Go back to the bot's defaults for every limit not given with it",
    )
    async def limits(
        self,
        interaction: discord.Interaction[JukeBot],
        max_length: app_commands.Range[float, MIN_LENGTH_SECONDS, MAX_LENGTH_OPTION_SECONDS] | None = None,
        max_samples: app_commands.Range[int, 1, 16] | None = None,
        max_running: app_commands.Range[int, 1, 100] | None = None,
        max_queued: app_commands.Range[int, 1, 100] | None = None,
        reset: bool = False,
    ) -> None:
        guild_id = actions.guild_id_of(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)  # saving may wait for a writer
        given = {
            "max_length_seconds": max_length,
            "max_samples_per_job": max_samples,
            "max_running_jobs_per_user": max_running,
            "max_queued_jobs_per_user": max_queued,
        }
        changes: dict[str, object] = {name: value for name, value in given.items() if value is not None}
        if not changes and not reset:
            raise InvalidRequest("Give at least one limit to change (or reset:true).")
        _check_within_the_operators(changes, Limits.resolve(self.bot.settings))
        if (
            reset
        ):  # every limit back to the bot's, but those given with it (which it dropped, saying "Saved.")
            changes = dict.fromkeys(given) | changes
        # Changed as stored when saved (an admin's change at once is kept, not undone); the jobs already
        # waiting follow the new running limit too (a worker checks it as it claims), and so do running
        # ones once they go back to the queue.
        stored = await self.bot.store.change_guild_settings(
            guild_id,
            lambda current: dataclasses.replace(current, **changes),  # type: ignore[arg-type]
            bot_wide_running_limit=self.bot.settings.max_running_jobs_per_user,
        )
        limits = Limits.resolve(self.bot.settings, stored)
        await interaction.followup.send("Saved.\n" + _describe(limits, interaction.guild), ephemeral=True)

    @group.command(name="channels", description="Allow the jukebox in a channel, remove one, or allow all")
    @app_commands.describe(action="What to do", channel="The channel (for allow and remove)")
    @app_commands.choices(
        action=[
            app_commands.Choice(name="allow", value="allow"),
            app_commands.Choice(name="remove", value="remove"),
            app_commands.Choice(name="allow everywhere", value="all"),
        ]
    )
    async def channels(
        self,
        interaction: discord.Interaction[JukeBot],
        action: str,
        # Every kind of channel a job may be asked in: a forum's posts count as the forum (a thread
        # as its channel), and voice and stage channels have a text chat of their own.
        channel: discord.TextChannel
        | discord.ForumChannel
        | discord.VoiceChannel
        | discord.StageChannel
        | None = None,
    ) -> None:
        guild_id = actions.guild_id_of(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)  # saving may wait for a writer
        if action != "all" and channel is None:
            raise InvalidRequest(f"Name the channel to {action}.")
        guild = interaction.guild

        def changed(current: GuildSettings) -> GuildSettings:
            """The list as stored when saved, with the change (an admin's change at once is kept)."""
            # Edit the list in force, which is the bot's JUKEBOT_ALLOWED_CHANNELS until the server has its
            # own. What is saved replaces that setting here: () is "every channel", not "use the setting".
            limits = Limits.resolve(self.bot.settings, current)
            in_force = limits.allowed_channel_ids
            # The setting is one list for every server: only this server's channels of it become its
            # own (others' ids copied here would close this server when its last channel is removed).
            allowed = list(limits.channels_here(actions.channel_of(guild)))
            if action == "all":
                return dataclasses.replace(current, allowed_channel_ids=())
            assert channel is not None
            if action == "allow" and channel.id not in allowed:
                allowed.append(channel.id)
            elif action == "remove":
                if not in_force:
                    raise InvalidRequest(
                        f"The jukebox works in every channel here, so there is no list to remove "
                        f"{channel.mention} from; nothing changed. Allow the channels it should work in "
                        "instead."
                    )
                if channel.id not in allowed:
                    raise InvalidRequest(f"{channel.mention} is not on the allow-list; nothing changed.")
                allowed.remove(channel.id)
                if not allowed:  # an empty allow-list means every channel: say so rather than open them
                    raise InvalidRequest(
                        f"{channel.mention} is the only allowed channel: without it the jukebox would work "
                        "everywhere. Allow another channel first, or choose `allow everywhere` if that "
                        "is what you want."
                    )
            return dataclasses.replace(current, allowed_channel_ids=tuple(allowed))

        stored = await self.bot.store.change_guild_settings(guild_id, changed)
        limits = Limits.resolve(self.bot.settings, stored)
        await interaction.followup.send("Saved.\n" + _describe(limits, interaction.guild), ephemeral=True)


async def setup(bot: JukeBot) -> None:
    await bot.add_cog(Admin(bot))
