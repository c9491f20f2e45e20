"""`/upsample`, `/continue`, `/sample` (re-send a stored sample) and `/top` (most-voted here)."""

from __future__ import annotations

import asyncio
import io
import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot import actions, curating, delivery, pictures
from bot.bot import PUBLIC_THINKING, JukeBot
from bot.errors import (
    DISCORD_FAILURES,
    MAX_MESSAGE_CHARS,
    InvalidRequest,
    JukebotError,
    discord_said,
    fit_line,
)
from bot.options import SampleId
from bot.progress import can_upsample, job_quality, style_line
from bot.relay import continued_text, first_parts
from bot.requests import (
    MAX_LENGTH_OPTION_SECONDS,
    MIN_LENGTH_SECONDS,
    TOP_COUNT,
    TOP_PERIODS,
    may_continue,
    top_since,
)
from bot.views import DYNAMIC_ITEMS, sample_view, submit_continue_form
from sampler.jobspec import params_or_defaults
from sampler.user_text import public_label
from storage.models import utcnow

log = logging.getLogger(__name__)
TOP_HEADINGS = {"day": "today", "week": "this week", "month": "this month", "all": "of all time"}
# An interaction's token lasts 15 minutes: a /sample whose files (re-encoded, pictured in turn with
# every other sample the bot prepares) are not ready by this is given up while the member can still
# be told, with the time left for the uploads.
SAMPLE_READY_WITHIN_S = 12 * 60.0


class Samples(commands.Cog):
    def __init__(self, bot: JukeBot) -> None:
        self.bot = bot
        # One /sample per member at a time: each may re-encode a long sample, in the queue the relay's
        # results wait in too.
        self._resending = actions.OnePerMember(
            "Your previous /sample is still being prepared; wait for it, then ask again."
        )

    async def cog_load(self) -> None:
        # The buttons under posted samples, also under those posted before a restart.
        self.bot.add_dynamic_items(*DYNAMIC_ITEMS)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(*DYNAMIC_ITEMS)

    @commands.Cog.listener()
    async def on_interaction(self, interaction: discord.Interaction[JukeBot]) -> None:
        await submit_continue_form(interaction)  # the Continue form, also one opened before a restart

    @commands.Cog.listener()
    async def on_raw_thread_delete(self, payload: discord.RawThreadDeleteEvent) -> None:
        actions.thread_deleted(self.bot, payload.thread_id)  # also one archived, not in the cache

    @app_commands.command(name="upsample", description="Take a preview sample to full quality")
    @app_commands.guild_only()
    @app_commands.describe(sample="The sample's number (shown above its audio)")
    async def upsample(self, interaction: discord.Interaction[JukeBot], sample: SampleId) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        await actions.request_upsample(self.bot, interaction, sample)

    @app_commands.command(name="continue", description="Extend a sample by some seconds")
    @app_commands.guild_only()
    @app_commands.describe(sample="The sample's number", seconds="Seconds to add (default 10)")
    async def continue_(
        self,
        interaction: discord.Interaction[JukeBot],
        sample: SampleId,
        seconds: app_commands.Range[float, MIN_LENGTH_SECONDS, MAX_LENGTH_OPTION_SECONDS] | None = None,
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        await actions.request_continue(self.bot, interaction, sample, seconds)

    @app_commands.command(name="sample", description="Post a stored sample again")
    @app_commands.guild_only()
    @app_commands.describe(id="The sample's number")
    async def sample(self, interaction: discord.Interaction[JukeBot], id: SampleId) -> None:
        actions.guild_id_of(interaction)  # a direct message is refused before anything public
        with self._resending.held_by(interaction.user.id):  # refused privately, before "thinking…"
            await self._resend(interaction, id)

    async def _resend(self, interaction: discord.Interaction[JukeBot], id: int) -> None:
        ready_by = asyncio.get_running_loop().time() + SAMPLE_READY_WITHIN_S
        # Acknowledged before the database is read: a remote one may take longer than Discord's 3 s. A
        # refusal still reaches only the user (the error handler takes the public "thinking…" away).
        await interaction.response.defer(thinking=True)
        interaction.extras[PUBLIC_THINKING] = True
        await actions.check_allowed_channel(self.bot, interaction)
        stored, job = await actions.usable_sample(self.bot, interaction, id)
        shown_here = await actions.Viewer(self.bot, interaction).readable_by_all_here(job.channel_id)
        if not shown_here and job.user_id != interaction.user.id:
            # A public post: as /top, only what everyone here may read, but for its maker's own choice.
            raise InvalidRequest(
                f"Sample #{stored.id} was made in <#{job.channel_id}>, which not everyone here can read, so "
                f"it is not posted in this channel: use `/sample {stored.id}` there."
            )
        limit = delivery.upload_limit(interaction.filesize_limit, None)
        stem = f"jukebot_sample_{stored.id}"
        files = await delivery.files_in_turn(
            stored.audio, stored.audio_format, limit, stem, stored.duration_seconds, ready_by
        )
        try:
            picture = await pictures.picture_of_sample(
                self.bot.store,
                job,
                stored.audio,
                stored.audio_format,
                stem,
                stored.duration_seconds,
                ready_by,
            )
        except delivery.NotInTime:  # the audio is ready: it goes out without its picture
            picture = None
        groups = delivery.with_picture(delivery.group_for_messages(files, limit), picture, limit)
        votes = await self.bot.store.vote_count(stored.id)
        content = (
            f"**Sample #{stored.id}** · job #{job.id} by <@{job.user_id}> · "
            f"{stored.duration_seconds:.1f} s · {job_quality(job)}"
        ) + style_line(job.params, stored.index)
        content += curating.order_line(job.params, MAX_MESSAGE_CHARS - len(content))
        view = sample_view(
            stored.id, votes, can_upsample=can_upsample(job), can_continue=may_continue(stored.codes(2))
        )
        for index, group in enumerate(groups):
            uploads = [
                discord.File(io.BytesIO(f.data), filename=f.filename, description=f.description)
                for f in group
            ]
            if index == 0:
                await interaction.followup.send(content, files=uploads, view=view)
                # The "thinking…" message is part 1 now: an error after this must leave it in place.
                interaction.extras.pop(PUBLIC_THINKING, None)
                continue
            try:
                await interaction.followup.send(continued_text(stored.id, index, len(groups)), files=uploads)
            except DISCORD_FAILURES as exc:
                log.warning(
                    "sample %s: part %d of %d was not posted: %r", stored.id, index + 1, len(groups), exc
                )
                verb = "is" if index == 1 else "are"
                raise JukebotError(
                    f"Sample #{stored.id} comes in {len(groups)} parts: {first_parts(index)} {verb} posted "
                    f"above, but part "
                    f"{index + 1} could not be posted (Discord said: {discord_said(exc)}). "
                    f"`/sample {stored.id}` posts the whole sample again."
                ) from exc

    @app_commands.command(name="top", description="The most-voted samples in this server")
    @app_commands.guild_only()
    @app_commands.describe(period="Which samples count: made today, this week, this month, or ever")
    @app_commands.choices(period=[app_commands.Choice(name=name, value=name) for name in TOP_PERIODS])
    async def top(self, interaction: discord.Interaction[JukeBot], period: str = "week") -> None:
        guild_id = actions.guild_id_of(interaction)
        since = top_since(period, utcnow())
        await interaction.response.defer(thinking=True)  # before the database: see /sample
        interaction.extras[PUBLIC_THINKING] = True
        await actions.check_allowed_channel(self.bot, interaction)
        viewer = actions.Viewer(self.bot, interaction)
        # A public reply: only what everyone reading this channel may see (`Viewer.may_show_here`).
        ranked = await curating.top_ranked(self.bot.store, guild_id, since, TOP_COUNT, viewer.may_show_here)
        heading = TOP_HEADINGS[period]
        if not ranked:
            # (true also where samples of channels not shown here are all there is)
            await interaction.followup.send(
                f"No samples {heading} to show in this channel yet: make one with /jukebox."
            )
            return
        head = f"**Top samples {heading}**"
        room = (MAX_MESSAGE_CHARS - len(head)) // len(ranked) - 1  # a newline each
        lines = [head]
        for place, entry in enumerate(ranked, start=1):
            lines.append(
                fit_line(
                    f"{place}. Sample #{entry.sample.id} · 👍 {entry.votes} · ",
                    public_label(params_or_defaults(entry.params).describe_sample_labels(entry.sample.index)),
                    f" · by <@{entry.user_id}> in <#{entry.channel_id}> (`/sample {entry.sample.id}`)",
                    room,
                )
            )
        await interaction.followup.send("\n".join(lines))


async def setup(bot: JukeBot) -> None:
    await bot.add_cog(Samples(bot))
