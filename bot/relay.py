"""The progress relay: keeps each job's progress message in step with the store, and posts results.

One background task. Each pass lists the unfinished jobs of the servers the bot is in, edits
their progress messages (only when the text changed, at most once per `min_edit_interval_s`
per message), and for jobs that finished posts the results, then the final progress text.
Passes run every `poll_interval_s` or at once after `poke()`.

Restarts: unfinished jobs are found in the store. Jobs that finished while the bot was down
are found by scanning recent channel history for our progress messages without a final mark
(`bot.progress.parse_progress_message`): a stopgap until the store records "results posted".
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import discord

from bot import delivery
from bot.progress import parse_progress_message, render_job
from bot.views import sample_view
from storage.errors import JobNotFound, SampleNotFound
from storage.models import JobKind, JobStatus
from storage.records import Job

if TYPE_CHECKING:
    from bot.bot import JukeBot

log = logging.getLogger(__name__)
NO_MENTIONS = discord.AllowedMentions.none()
NOTIFY_USER = discord.AllowedMentions(everyone=False, roles=False, users=True, replied_user=False)


@dataclass
class _Watched:
    text: str | None = None
    edited_at: float = float("-inf")  # time.monotonic() of the last edit
    reply_to: int | None = None  # message that results should reply to


class ProgressRelay:
    def __init__(
        self,
        bot: JukeBot,
        *,
        poll_interval_s: float = 5.0,
        min_edit_interval_s: float = 5.0,
        history_scan_limit: int = 50,
    ) -> None:
        self.bot = bot
        self.store = bot.store
        self.poll_interval_s = poll_interval_s
        self.min_edit_interval_s = min_edit_interval_s
        self.history_scan_limit = history_scan_limit
        self._watched: dict[int, _Watched] = {}
        self._posted: set[int] = set()  # jobs whose results (or failure) are posted
        self._sample_messages: dict[int, int] = {}  # sample id -> the message that carries it
        self._posting: set[int] = set()  # jobs whose progress message is being posted right now
        self._wake = asyncio.Event()
        self._pass_lock = asyncio.Lock()

    # ---------------------------------------------------------------- control

    def track(self, job_id: int, *, reply_to: int | None = None) -> None:
        watched = self._watched.setdefault(job_id, _Watched())
        if reply_to is not None:
            watched.reply_to = reply_to

    def poke(self) -> None:
        """Run a pass now instead of at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        await self.bot.wait_until_ready()
        try:
            await self.recover()
        except Exception:
            log.exception("could not scan channels for jobs that finished while the bot was down")
        while True:
            try:
                await self.run_pass()
            except Exception:
                log.exception("progress relay pass failed; retrying at the next poll")
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval_s)
            except TimeoutError:
                pass
            self._wake.clear()

    # ---------------------------------------------------------------- passes

    async def run_pass(self) -> None:
        async with self._pass_lock:
            guild_ids = {guild.id for guild in self.bot.guilds}
            unfinished = await self.store.unfinished_jobs()
            positions = _queue_positions(unfinished)
            ours = [job for job in unfinished if job.guild_id in guild_ids]
            for job in ours:
                self.track(job.id)
                await self._update(job, positions.get(job.id))
            still_running = {job.id for job in ours}
            for job_id in [job_id for job_id in self._watched if job_id not in still_running]:
                try:
                    job = await self.store.get_job(job_id)
                except JobNotFound:
                    self._watched.pop(job_id, None)
                    continue
                if job.finished:
                    await self._finish(job)

    async def recover(self) -> None:
        """Find progress messages of jobs that finished while the bot was down."""
        assert self.bot.user is not None
        for guild in self.bot.guilds:
            for channel in guild.text_channels:
                if not channel.permissions_for(guild.me).read_message_history:
                    continue
                try:
                    async for message in channel.history(limit=self.history_scan_limit):
                        if message.author.id != self.bot.user.id:
                            continue
                        parsed = parse_progress_message(message.content)
                        if parsed is not None and not parsed[1]:
                            self.track(parsed[0])
                except discord.HTTPException as exc:
                    log.warning("could not read the history of #%s: %s", channel.name, exc)

    async def _update(self, job: Job, queue_position: int | None) -> None:
        if job.progress_message_id is None:
            await self.post_progress_message(job.id)
            return
        watched = self._watched[job.id]
        text = render_job(job, queue_position=queue_position)
        if text == watched.text or time.monotonic() - watched.edited_at < self.min_edit_interval_s:
            return
        await self._edit(job, text)

    async def _edit(self, job: Job, text: str) -> None:
        assert job.progress_message_id is not None
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        watched = self._watched.setdefault(job.id, _Watched())
        try:
            await channel.get_partial_message(job.progress_message_id).edit(
                content=text, allowed_mentions=NO_MENTIONS
            )
        except discord.NotFound:  # someone deleted the progress message: post a fresh one
            message = await channel.send(text, allowed_mentions=NO_MENTIONS)
            await self.store.set_progress_message(job.id, message.id)
        watched.text, watched.edited_at = text, time.monotonic()

    async def post_progress_message(self, job_id: int) -> None:
        """Post the job's progress message (once) and record its id in the store."""
        if job_id in self._posting:  # the command and a relay pass may both try: one posts
            return
        self._posting.add(job_id)
        try:
            job = await self.store.get_job(job_id)
            if job.progress_message_id is not None:
                return
            watched = self._watched.setdefault(job.id, _Watched())
            position = await self.store.queue_position(job.id) if job.status == JobStatus.QUEUED else None
            text = render_job(job, queue_position=position)
            channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
            reference = self._reference(job.channel_id, job.guild_id, watched.reply_to)
            message = await channel.send(text, allowed_mentions=NO_MENTIONS, reference=reference)  # type: ignore[arg-type]
            await self.store.set_progress_message(job.id, message.id)
            watched.text, watched.edited_at = text, time.monotonic()
        finally:
            self._posting.discard(job_id)

    def _reference(
        self, channel_id: int, guild_id: int | None, message_id: int | None
    ) -> discord.MessageReference | None:
        if message_id is None:
            return None
        return discord.MessageReference(
            message_id=message_id, channel_id=channel_id, guild_id=guild_id, fail_if_not_exists=False
        )

    # ---------------------------------------------------------------- results

    async def _finish(self, job: Job) -> None:
        if job.id in self._posted:
            self._watched.pop(job.id, None)
            return
        sample_count = None
        if job.status == JobStatus.SUCCEEDED:
            sample_count = await self._post_samples(job)
        text = render_job(job, sample_count=sample_count)
        if job.progress_message_id is not None:
            await self._edit(job, text)
        else:
            channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
            await channel.send(text, allowed_mentions=NO_MENTIONS)
        self._posted.add(job.id)
        self._watched.pop(job.id, None)

    async def _results_reply_target(self, job: Job) -> int | None:
        watched = self._watched.get(job.id)
        if watched is not None and watched.reply_to is not None:
            return watched.reply_to
        if job.kind == JobKind.GENERATE or job.parent_sample_id is None:
            return job.progress_message_id
        if job.parent_sample_id in self._sample_messages:
            return self._sample_messages[job.parent_sample_id]
        try:  # the parent's job's progress message is in the store even after a restart
            parent = await self.store.get_sample(job.parent_sample_id)
            parent_job = await self.store.get_job(parent.job_id)
        except (SampleNotFound, JobNotFound):
            return job.progress_message_id
        if parent_job.channel_id == job.channel_id and parent_job.progress_message_id is not None:
            return parent_job.progress_message_id
        return job.progress_message_id

    async def _post_samples(self, job: Job) -> int:
        infos = await self.store.samples_for_job(job.id)
        votes = await self.store.vote_counts(info.id for info in infos)
        limit = self.bot.upload_limit(job.guild_id)
        channel = self.bot.get_partial_messageable(job.channel_id, guild_id=job.guild_id)
        reply_to = await self._results_reply_target(job)
        for position, info in enumerate(infos, start=1):
            sample = await self.store.get_sample(info.id)
            quality = "full quality" if 0 in sample.levels else "preview (top level only)"
            content = (
                f"<@{job.user_id}> **Sample #{sample.id}** · job #{job.id} · {position}/{len(infos)} · "
                f"{sample.duration_seconds:.1f} s · {quality} · seed {sample.seed}"
            )
            stem = f"jukebot_sample_{sample.id}"
            try:
                files = await asyncio.to_thread(
                    delivery.files_for_sample,
                    sample.audio,
                    sample.audio_format,
                    limit,
                    stem,
                    sample.duration_seconds,
                )
                groups = delivery.group_for_messages(files, limit)
            except delivery.DeliveryImpossible as exc:
                groups = [[]]
                content += f"\n⚠️ {exc} Re-send it later with `/sample {sample.id}`."
            view = sample_view(sample.id, votes.get(sample.id, 0), can_upsample=0 not in sample.levels)
            reference = self._reference(job.channel_id, job.guild_id, reply_to)
            first: discord.Message | None = None
            for index, group in enumerate(groups):
                uploads = [
                    discord.File(io.BytesIO(f.data), filename=f.filename, description=f.description)
                    for f in group
                ]
                if index == 0:
                    first = await channel.send(
                        content,
                        files=uploads,
                        view=view,
                        reference=reference,  # type: ignore[arg-type]
                        allowed_mentions=NOTIFY_USER if position == 1 else NO_MENTIONS,
                    )
                else:
                    await channel.send(
                        f"Sample #{sample.id}, continued ({index + 1}/{len(groups)})",
                        files=uploads,
                        allowed_mentions=NO_MENTIONS,
                    )
            if first is not None:
                self._sample_messages[sample.id] = first.id
        return len(infos)


def _queue_positions(unfinished: list[Job]) -> dict[int, int]:
    """1-based queue places in the order workers claim jobs (priority, then age)."""
    queued = sorted(
        (job for job in unfinished if job.status == JobStatus.QUEUED),
        key=lambda job: (job.priority, job.created_at, job.id),
    )
    return {job.id: position for position, job in enumerate(queued, start=1)}
