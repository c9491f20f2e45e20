"""Where the slash commands live: one scope per run, so no server ever lists a command twice.

A normal run syncs the commands globally (every server, up to an hour to appear) and removes
copies an earlier `--sync-guild` run left in servers the bot is in. A `--sync-guild` run (for
development: commands appear at once) syncs them to those servers only and clears the global ones.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import discord
from discord import app_commands
from discord.ext import commands

log = logging.getLogger(__name__)


async def sync_commands(bot: commands.Bot, guild_ids: Sequence[int]) -> None:
    """Sync the command tree to one scope: `guild_ids` (and clear the global commands), or global."""
    tree: app_commands.CommandTree[commands.Bot] = bot.tree
    if not guild_ids:
        await tree.sync()
        return
    for guild_id in guild_ids:
        guild = discord.Object(id=guild_id)
        tree.copy_global_to(guild=guild)
        await tree.sync(guild=guild)
    global_commands = tree.get_commands()
    tree.clear_commands(guild=None)
    try:
        await tree.sync()  # no global copies: those servers would show each command twice
    finally:
        for command in global_commands:
            tree.add_command(command)
    log.info("commands synced to server(s) %s only; global commands cleared", ", ".join(map(str, guild_ids)))


async def clear_guild_copies(bot: commands.Bot) -> None:
    """After a global sync: remove commands an earlier `--sync-guild` run left in the bot's servers."""
    await bot.wait_until_ready()
    tree: app_commands.CommandTree[commands.Bot] = bot.tree
    for guild in bot.guilds:
        try:
            if not await tree.fetch_commands(guild=guild):
                continue
            tree.clear_commands(guild=guild)
            await tree.sync(guild=guild)
        except discord.RateLimited as exc:
            log.warning(
                "Discord asks to wait %.0f s before changing commands again: the server-only copies in the "
                "bot's servers from server %s on stay until the next start",
                exc.retry_after,
                guild.id,
            )
            return
        log.info("removed the server-only copies of the commands in server %s (%s)", guild.id, guild.name)
