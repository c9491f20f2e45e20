"""`/curate`: join a selection of this server's samples into one piece, stored and posted like a sample.

The joining runs in a thread of the bot (`asyncio.to_thread`), not in a worker: workers are GPU
processes that claim queued jobs by model, and this is a few seconds to minutes of CPU over samples
the bot already reads from the store. One curation runs at a time per bot (`_one_at_a_time`), so a
burst cannot take every core; whoever has to wait is told so, and one per member runs or waits
(`_curating`), its samples' audio loaded only when its turn comes. Progress goes into the (private)
deferred reply at most once per `progress_min_edit_seconds` (a setting); the piece is posted in the channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import discord
from discord import app_commands
from discord.ext import commands

from bot import curating, delivery, pictures, relay
from bot.actions import OnePerMember, Viewer, check_allowed_channel, check_bot_can_post, guild_id_of
from bot.bot import JukeBot, user_message
from bot.errors import DISCORD_FAILURES, InvalidRequest, discord_said, fit_message
from bot.options import JobId
from bot.relay import continued_text, first_parts, new_poster_id, sample_nonce
from bot.requests import TOP_PERIODS
from bot.views import sample_view
from storage.records import MessageParts, Sample

log = logging.getLogger(__name__)
NO_MENTIONS = discord.AllowedMentions.none()
# Of `DISCORD_FAILURES`, the ones where Discord may have done it: tried once more with the same nonce.
ANSWER_MAYBE_LOST = (discord.DiscordServerError, aiohttp.ClientError, OSError, TimeoutError)


class _ThrottledReply:
    """Edits the deferred reply with the latest progress line, at most once per `interval_s`.

    `post` may be called from the curation's thread; the edits happen on the event loop."""

    def __init__(self, interaction: discord.Interaction[JukeBot], prefix: str, interval_s: float) -> None:
        self.interaction = interaction
        self.prefix = prefix
        self.interval_s = interval_s
        self.loop = asyncio.get_running_loop()
        self._latest: str | None = None
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()

    def post(self, line: str) -> None:
        self.loop.call_soon_threadsafe(self._set, line)

    def _set(self, line: str) -> None:
        self._latest = line
        self._changed.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            await self._changed.wait()
            self._changed.clear()
            if self._stopping.is_set():
                return
            try:
                await self.interaction.edit_original_response(
                    content=fit_message(self.prefix + (self._latest or ""))
                )
            except DISCORD_FAILURES as exc:  # the curation goes on: only this line is not shown
                log.warning("could not show curation progress to user %s: %r", self.interaction.user.id, exc)
            with contextlib.suppress(TimeoutError):  # the throttle, cut short by `stop`
                await asyncio.wait_for(self._stopping.wait(), timeout=self.interval_s)

    def stop(self) -> None:
        """No more edits once the edit in flight (if any) ends: the caller's next edit comes last."""
        self._stopping.set()
        self._changed.set()


async def _tell(interaction: discord.Interaction[JukeBot], content: str) -> None:
    """The private reply's last word, or the notice that it waits its turn. A curation that waited
    its turn long may outlive the reply's 15-minute token: the piece is stored and posted all the
    same, so that (or any failure to show a line) is a log line."""
    try:
        await interaction.edit_original_response(content=content)
    except DISCORD_FAILURES as exc:
        log.warning("could not update the /curate reply to user %s: %r", interaction.user.id, exc)


class Curate(commands.Cog):
    def __init__(self, bot: JukeBot) -> None:
        self.bot = bot
        self._one_at_a_time = asyncio.Semaphore(1)
        # Members with a curation running or waiting its turn: one each, so that nobody's burst makes
        # everyone wait (and each waits holding nothing: the audio loads when its turn comes).
        self._curating = OnePerMember(
            "Your earlier /curate is still being made (or waits its turn); wait for its answer, then "
            "ask again."
        )
        # Called in the curation's thread before the samples are joined: tests hold a curation there.
        self.before_joining: Callable[[], None] | None = None

    @app_commands.command(
        name="curate", description="Join samples made here into one piece, similar ones together"
    )
    @app_commands.guild_only()
    @app_commands.describe(
        job="Join a job's samples (its number)",
        user="Join this person's samples made in this server",
        top="Join this server's most-voted samples of a period (what /top lists)",
        samples='Join these samples, by number: "12, 15, 19"',
    )
    @app_commands.choices(top=[app_commands.Choice(name=name, value=name) for name in TOP_PERIODS])
    async def curate(
        self,
        interaction: discord.Interaction[JukeBot],
        job: JobId | None = None,
        user: discord.User | discord.Member | None = None,
        top: str | None = None,
        samples: app_commands.Range[str, 1, curating.MAX_ID_TEXT_CHARS] | None = None,
    ) -> None:
        guild_id = guild_id_of(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            await self._curate(
                interaction,
                guild_id,
                curating.Selection(job=job, user=user.id if user else None, top=top, sample_ids=samples),
            )
        except Exception as exc:
            message = user_message(exc)
            if message is None:
                raise  # the tree's error handler logs it and apologises
            await _tell(interaction, fit_message(message))

    async def _curate(
        self, interaction: discord.Interaction[JukeBot], guild_id: int, selection: curating.Selection
    ) -> None:
        check_bot_can_post(interaction)  # before minutes of joining: the piece is posted here
        await check_allowed_channel(self.bot, interaction)
        store = self.bot.store
        max_count = self.bot.settings.max_curate_samples
        viewer = Viewer(self.bot, interaction)  # samples of channels the member cannot see stay out
        resolved = await curating.resolve(
            store, guild_id, selection, max_count, viewer.may_use, viewer.may_show_here
        )
        sample_ids = resolved.sample_ids
        infos = [await store.get_sample_info(sample_id) for sample_id in sample_ids]
        curating.check_duration([sample.duration_seconds for sample in infos])
        similarity = curating.similarity_to_use(infos)
        await self._not_joined_before(guild_id, sample_ids, similarity, viewer)
        with self._curating.held_by(interaction.user.id):
            piece = await self._join_in_turn(interaction, selection, sample_ids, similarity)
        # Again: a curation of the same samples that this one waited for has stored its piece by now.
        await self._not_joined_before(guild_id, sample_ids, similarity, viewer)
        last = infos[sample_ids.index(piece.order[-1])]
        last_job = await store.get_job(last.job_id)
        # Its posting is claimed as the relay claims a job's results: a bot that stops or dies before
        # the piece is out leaves it to the relay (this bot's, or the next one's), not unposted for good.
        poster = new_poster_id("curate")
        job_id, sample_id = await store.store_curation(
            guild_id=guild_id,
            channel_id=interaction.channel_id or 0,
            user_id=interaction.user.id,
            model=last.model,
            params=curating.piece_params(last_job, last.index, piece, selection),
            sample=curating.piece_sample(piece),
            poster_id=poster,
            posting_lease_s=relay.RESULTS_LEASE_S,
        )
        interaction.extras["job_id"] = job_id
        async with relay.claim_renewed(store, job_id, poster, relay.RESULTS_LEASE_S):
            try:
                made = _Made(guild_id, job_id, sample_id, piece, resolved)
                reply = await self._post_piece(interaction, made)
            except BaseException:  # stopped, or a failure no reply covers: the relay posts what is missing
                with contextlib.suppress(Exception):  # (else the claim runs out: the same, a lease later)
                    await store.release_results_posting(job_id, poster, history_unread=True)
                raise
        await store.finish_results_posting(job_id, poster)
        await _tell(interaction, reply)

    async def _not_joined_before(
        self, guild_id: int, sample_ids: list[int], similarity: curating.Similarity, viewer: Viewer
    ) -> None:
        earlier = await curating.joined_before(
            self.bot.store, guild_id, sample_ids, similarity, viewer.may_use
        )
        if earlier is not None:
            raise InvalidRequest(curating.joined_before_text(earlier, len(sample_ids)))

    async def _post_piece(
        self,
        interaction: discord.Interaction[JukeBot],
        made: _Made,
    ) -> str:
        """Post the stored piece; returns what the reply says: where it is, or what Discord refused."""
        sample_id, piece = made.sample_id, made.piece
        try:
            first_id, strip_refused = await self._post(interaction, made)
        except _PostedPartWay as part_way:
            # Its first messages are in the channel, with its buttons: recorded as the relay records a
            # sample posted part-way (`posted` stays false), and the reply says what is there.
            exc, parts = part_way.failure, part_way.parts
            log.warning(
                "curated sample %s: only %d of its %d messages posted in channel %s: %s",
                sample_id,
                parts.sent,
                parts.total,
                interaction.channel_id,
                exc,
            )
            await self.bot.store.set_sample_message(sample_id, part_way.first_id, parts=parts)
            return (
                f"Sample #{sample_id} is made and stored, and comes in {parts.total} parts: I posted "
                f"{first_parts(parts.sent)} in this channel, but not the rest "
                f"(Discord said: {discord_said(exc)}). "
                f"`/sample {sample_id}` posts it whole where I may."
            )
        except DISCORD_FAILURES as exc:
            # Stored already, and posting it again would meet the same refusal: say where it is, not
            # "something went wrong".
            log.warning(
                "could not post curated sample %s in channel %s: %s", sample_id, interaction.channel_id, exc
            )
            return (
                f"Sample #{sample_id} is made and stored, but I could not post it in this channel "
                f"(Discord said: {discord_said(exc)}). `/sample {sample_id}` posts it where I may."
            )
        # (out of the `try`: a database error is not Discord's)
        await self.bot.store.set_sample_message(sample_id, first_id)  # its buttons and /sample find it
        similarity = piece.similarity.description
        done = f"Done: sample #{sample_id} is posted in this channel (similarity: {similarity})."
        if strip_refused is None:
            return done
        log.warning(
            "curated sample %s: its picture of the order was not posted in channel %s: %s",
            sample_id,
            interaction.channel_id,
            strip_refused,
        )
        return (
            f"{done} Its picture of the order, which comes after the audio, was not posted (Discord "
            f"said: {discord_said(strip_refused)}); `/sample {sample_id}` posts the piece with it."
        )

    async def _join_in_turn(
        self,
        interaction: discord.Interaction[JukeBot],
        selection: curating.Selection,
        sample_ids: list[int],
        similarity: curating.Similarity,
    ) -> curating.Piece:
        """Wait for the curation running now, if any (saying so), then load the samples and join them."""
        if self._one_at_a_time.locked():  # (a notice Discord does not take stops nothing)
            await _tell(
                interaction, "Another curation is running in this bot; yours starts as soon as it ends…"
            )
        async with self._one_at_a_time:
            loaded = [await self.bot.store.get_sample(sample_id) for sample_id in sample_ids]
            prefix = f"Joining {len(loaded)} samples ({selection.describe()}): "
            reply = _ThrottledReply(interaction, prefix, self.bot.settings.progress_min_edit_seconds)
            showing = asyncio.create_task(reply.run(), name="curate-progress")
            try:
                piece = await asyncio.to_thread(self._join, loaded, similarity, reply.post)
            finally:
                reply.stop()
                await showing
        return piece

    def _join(
        self, loaded: list[Sample], similarity: curating.Similarity, progress: curating.Progress
    ) -> curating.Piece:
        if self.before_joining is not None:
            self.before_joining()
        return curating.make_piece(loaded, similarity, progress)

    async def _post(
        self,
        interaction: discord.Interaction[JukeBot],
        made: _Made,
    ) -> tuple[int, BaseException | None]:
        """The piece in the channel: its audio (split to fit the upload limit), the order as a strip, the
        buttons. Returns the id of its first message, which the caller records so that the piece's
        buttons and /sample work like any sample's, and Discord's refusal of the strip's own message
        (a picture after the audio), if any. Raises `_PostedPartWay` when Discord took only the first
        of the audio's messages."""
        guild_id, job_id, sample_id, piece, resolved = (
            made.guild_id,
            made.job_id,
            made.sample_id,
            made.piece,
            made.resolved,
        )
        limit = delivery.upload_limit(interaction.filesize_limit, None)
        content = curating.piece_text(
            sample_id, job_id, interaction.user.id, piece, resolved.inside, resolved.sharing
        )
        stem = f"jukebot_sample_{sample_id}"
        groups, impossible = await delivery.grouped_files_or_reason(
            piece.audio, curating.PIECE_FORMAT, limit, stem, piece.duration_seconds
        )
        if impossible is not None:
            content = fit_message(f"{content}\n⚠️ {impossible} Re-send it later with `/sample {sample_id}`.")
        strip = pictures.strip_file(stem, piece.strip, len(piece.order))
        audio_messages = len(groups)
        groups = delivery.with_picture(groups, strip, limit, own_message=True)  # the order is the point
        channel = self.bot.get_partial_messageable(interaction.channel_id or 0, guild_id=guild_id)
        view = sample_view(sample_id, 0, can_upsample=False, can_continue=curating.continuable(piece))
        sent: list[discord.Message] = []
        for index, group in enumerate(groups):
            # The audio's parts numbered as the relay numbers a sample's (a bot taking over a piece whose
            # poster stopped finds them so); the strip, when it has a message of its own, is no part.
            if index == 0:
                text = content
            elif index < audio_messages:
                text = continued_text(sample_id, index, audio_messages)
            else:
                text = f"Sample #{sample_id}: the order its samples play in"
            # As the relay's samples: sent again after a lost answer, Discord answers with the first.
            nonce = sample_nonce(sample_id, index, limit)
            try:
                try:
                    sent.append(await _send(channel, text, group, view if index == 0 else None, nonce))
                except ANSWER_MAYBE_LOST as exc:  # (Discord's 500s, discord.py has tried again already)
                    log.warning(
                        "curated sample %s: no answer to message %d (%r); again", sample_id, index + 1, exc
                    )
                    sent.append(await _send(channel, text, group, view if index == 0 else None, nonce))
            except DISCORD_FAILURES as exc:
                if not sent:
                    raise  # nothing of it is in the channel
                if index >= audio_messages:  # all its audio is out: only the strip's own message is not
                    return sent[0].id, exc
                # (parts counted as the relay counts them: the audio's messages)
                raise _PostedPartWay(sent[0].id, MessageParts(len(sent), audio_messages, limit), exc) from exc
        return sent[0].id, None


@dataclass(frozen=True, slots=True)
class _Made:
    """A piece stored and to post: where, its job and sample, and what it was joined from."""

    guild_id: int
    job_id: int
    sample_id: int
    piece: curating.Piece
    resolved: curating.Resolved


class _PostedPartWay(Exception):
    """Discord took the first `parts.sent` of the piece's messages (the first is `first_id`), then
    refused the next, or did not answer it (`failure`)."""

    def __init__(self, first_id: int, parts: MessageParts, failure: BaseException) -> None:
        super().__init__(f"{parts.sent} of {parts.total} messages posted: {failure!r}")
        self.first_id = first_id
        self.parts = parts
        self.failure = failure


async def _send(
    channel: discord.PartialMessageable,
    text: str,
    files: list[delivery.AudioFile],
    view: discord.ui.View | None,
    nonce: str,
) -> discord.Message:
    uploads = [
        discord.File(io.BytesIO(f.data), filename=f.filename, description=f.description) for f in files
    ]
    if view is None:
        return await channel.send(text, files=uploads, allowed_mentions=NO_MENTIONS, nonce=nonce)
    return await channel.send(text, files=uploads, view=view, allowed_mentions=NO_MENTIONS, nonce=nonce)


async def setup(bot: JukeBot) -> None:
    await bot.add_cog(Curate(bot))
