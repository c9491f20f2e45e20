"""`/cancel` (and the Cancel button under progress messages), `/queue` and `/history`."""

from __future__ import annotations

import asyncio
import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot import actions
from bot.bot import JukeBot
from bot.errors import MAX_MESSAGE_CHARS, StorageOutage, fit_line, listed
from bot.options import JobId
from bot.progress import render_queue
from bot.requests import MAX_HISTORY_PAGE, history_page
from bot.views import CANCEL_ITEMS
from sampler.jobspec import params_or_defaults
from sampler.user_text import public_label
from storage.models import JobStatus, utcnow
from storage.records import Job
from storage.store import queue_places

log = logging.getLogger(__name__)

HISTORY_PAGE = 10
HISTORY_SCAN = 200  # jobs read at a time while looking for a page of those the member may see
# The most of another member's jobs one /history reads looking for those the member may see: the
# rest are not looked through (the reply says so), however many they have in hidden channels.
HISTORY_SCAN_LIMIT = 1000
SAMPLE_IDS_CHARS = 48  # a job's sample numbers in one /history line: the first few, then a count
# Removed from a server while its database is away: the waits between tries to cancel its jobs.
GUILD_REMOVE_FIRST_WAIT_S = 1.0
GUILD_REMOVE_MAX_WAIT_S = 60.0


class Jobs(commands.Cog):
    def __init__(self, bot: JukeBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        # The Cancel button under progress messages, also under those posted before a restart.
        self.bot.add_dynamic_items(*CANCEL_ITEMS)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(*CANCEL_ITEMS)

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        """Jobs of servers the bot is not in (removed while it was offline: no `on_guild_remove`)
        would use GPU time for results nobody could see. The bot does not cancel them itself: another
        bot (another token) on the same database may serve those servers. It tells the operator."""
        ours = {guild.id for guild in self.bot.guilds}
        try:
            await self.bot.store.mark_guilds_present(ours)  # their jobs may be retried again
            unfinished = await self.bot.store.unfinished_jobs()
        except Exception:  # the database may be down at start; the relay says so soon enough
            log.debug("could not look for jobs of servers this bot left", exc_info=True)
            return
        strays = [job.id for job in unfinished if job.guild_id is not None and job.guild_id not in ours]
        if strays:
            log.warning(
                "jobs %s belong to servers this bot is not in (removed while it was offline?): they "
                "run, but their results cannot be posted; if no other bot serves those servers, "
                "`jukebot jobs cancel %s`",
                ", ".join(f"#{job_id}" for job_id in strays),
                " ".join(str(job_id) for job_id in strays),
            )

    @commands.Cog.listener()
    async def on_guild_join(self, guild: discord.Guild) -> None:
        """Added (back) to a server: the operator may retry its jobs again. (At start `on_ready` says so
        for every server the bot is in, in one go.)"""
        try:
            await self.bot.store.mark_guilds_present([guild.id])
        except Exception as exc:  # e.g. the database is away: the next start records it
            log.warning(
                "joined server %s but could not record it (%r): `jukebot jobs retry` refuses its jobs of "
                "before until the bot's next start, or its members' next request for a job there",
                guild.id,
                exc,
            )

    @commands.Cog.listener()
    async def on_guild_remove(self, guild: discord.Guild) -> None:
        """Removed from a server: its jobs would use GPU time for results no one there could see. A
        database away at that moment is waited for (nothing else would cancel them, nor record that the
        bot left, until its next start), unless the bot is back in the server by then."""
        wait_s = GUILD_REMOVE_FIRST_WAIT_S
        while self.bot.get_guild(guild.id) is None:
            try:
                stopped = await self.bot.store.cancel_guild_jobs(guild.id)
            except Exception as exc:
                if StorageOutage.of(exc) is None:
                    raise
                log.warning(
                    "removed from server %s, but could not cancel its jobs (%r): trying again in %.0f s",
                    guild.id,
                    exc,
                    wait_s,
                )
                await asyncio.sleep(wait_s)
                wait_s = min(2 * wait_s, GUILD_REMOVE_MAX_WAIT_S)
                continue
            if stopped:
                log.info("left server %s: cancelled its jobs %s", guild.id, [job_id for job_id, _ in stopped])
            return

    @commands.Cog.listener()
    async def on_guild_channel_delete(self, channel: discord.abc.GuildChannel) -> None:
        await actions.cancel_queued_in_gone_channel(self.bot.store, channel.id)

    @commands.Cog.listener()
    async def on_raw_thread_delete(self, payload: discord.RawThreadDeleteEvent) -> None:
        await actions.cancel_queued_in_gone_channel(self.bot.store, payload.thread_id)

    @app_commands.command(
        name="cancel", description="Stop one of your jobs (moderators: anyone's job in this server)"
    )
    @app_commands.guild_only()
    @app_commands.describe(job="The job's number (see /queue)")
    async def cancel(self, interaction: discord.Interaction[JukeBot], job: JobId) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)  # the cancel may wait for a writer
        message = await actions.cancel_job(self.bot, interaction, job)
        await interaction.followup.send(message, ephemeral=True)

    @app_commands.command(
        name="queue", description="Your jobs' places in the queue, and what runs in this server"
    )
    @app_commands.guild_only()
    async def queue(self, interaction: discord.Interaction[JukeBot]) -> None:
        guild_id = actions.guild_id_of(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        everywhere = await self.bot.store.unfinished_jobs()  # the queue is every server's
        unfinished = [job for job in everywhere if job.guild_id == guild_id]
        mine = [job for job in unfinished if job.user_id == interaction.user.id]
        places = queue_places(everywhere, await self.bot.store.served_models())
        viewer = actions.Viewer(self.bot, interaction)  # others' jobs of channels they cannot see stay out
        running = [
            job
            for job in unfinished
            if job.status != JobStatus.QUEUED and await viewer.may_use(job.channel_id, job.user_id)
        ]
        await interaction.followup.send(render_queue(mine, places, running, utcnow()), ephemeral=True)

    @app_commands.command(name="history", description="Jobs someone (you by default) ran in this server")
    @app_commands.guild_only()
    @app_commands.describe(user="Whose jobs (default: yours)", page="Page number, newest first")
    async def history(
        self,
        interaction: discord.Interaction[JukeBot],
        user: discord.User | discord.Member | None = None,
        page: app_commands.Range[int, 1, MAX_HISTORY_PAGE] = 1,
    ) -> None:
        guild_id = actions.guild_id_of(interaction)
        # Acknowledged before the database is read: a remote one may take longer than Discord's 3 s.
        await interaction.response.defer(ephemeral=True, thinking=True)
        page = history_page(page)
        who = user or interaction.user
        jobs, capped, has_more = await self._history_page(interaction, who.id, guild_id, page)
        older = (
            f"Older jobs may be hidden: only their latest {HISTORY_SCAN_LIMIT:,} jobs were looked "
            "through for those made in channels you can read."
            if capped
            else None
        )
        if not jobs:
            none = "no jobs here" if page == 1 else f"no jobs on page {page}"
            none = f"{who.mention} has {none}" + (" that you can see." if capped else ".")
            await interaction.followup.send(none + (f"\n{older}" if older else ""), ephemeral=True)
            return
        made = await self.bot.store.samples_of_jobs(
            job.id for job in jobs if job.status == JobStatus.SUCCEEDED
        )
        head = f"**Jobs of {who.mention}**, page {page}"
        # Another member's history: the next page is theirs only with `user:` (else it is the reader's).
        whose = "" if who.id == interaction.user.id else f" with `user:` {who.mention}"
        more = f"More: `/history page:{page + 1}`{whose}" if has_more and page < MAX_HISTORY_PAGE else None
        tail = "\n".join(line for line in (more, older) if line) or None
        room = (MAX_MESSAGE_CHARS - len(head) - len(tail or "")) // len(jobs) - 2  # a newline each
        lines = [head]
        for job in jobs:
            samples = [f"#{sample.id}" for sample in made.get(job.id, [])]
            listing = f" → samples {listed(samples, SAMPLE_IDS_CHARS)}" if samples else ""
            lines.append(
                fit_line(
                    f"• Job #{job.id} · {job.kind.value} · {job.model} · ",
                    public_label(params_or_defaults(job.params).describe_labels()),
                    f" · {job.status.value} · <t:{int(job.created_at.timestamp())}:R>{listing}",
                    room,
                )
            )
        if tail is not None:
            lines.append(tail)
        await interaction.followup.send("\n".join(lines), ephemeral=True)

    async def _history_page(
        self, interaction: discord.Interaction[JukeBot], user_id: int, guild_id: int, page: int
    ) -> tuple[list[Job], bool, bool]:
        """The user's jobs on `page`, newest first, counting only those the member may see: pages of
        another member's history leave out jobs made in channels the member cannot see, looking
        through at most their latest HISTORY_SCAN_LIMIT jobs; whether older ones went unread; and
        whether a next page has any (one job more is read to know)."""
        store = self.bot.store
        skip = (page - 1) * HISTORY_PAGE
        if user_id == interaction.user.id:  # one's own jobs, all of them
            own = await store.recent_jobs(user_id, guild_id, limit=HISTORY_PAGE + 1, offset=skip)
            return own[:HISTORY_PAGE], False, len(own) > HISTORY_PAGE
        viewer = actions.Viewer(self.bot, interaction)
        shown: list[Job] = []
        offset = 0
        capped = False
        while len(shown) < skip + HISTORY_PAGE + 1:
            if offset >= HISTORY_SCAN_LIMIT:  # older ones go unread, if there are any
                capped = bool(await store.recent_jobs(user_id, guild_id, limit=1, offset=offset))
                break
            limit = min(HISTORY_SCAN, HISTORY_SCAN_LIMIT - offset)
            batch = await store.recent_jobs(user_id, guild_id, limit=limit, offset=offset)
            shown += [job for job in batch if await viewer.may_use(job.channel_id, job.user_id)]
            if len(batch) < limit:
                break
            offset += limit
        return shown[skip : skip + HISTORY_PAGE], capped, len(shown) > skip + HISTORY_PAGE


async def setup(bot: JukeBot) -> None:
    await bot.add_cog(Jobs(bot))
