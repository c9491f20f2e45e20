"""What the commands and buttons do once they parsed their input: check limits, enqueue, announce.

Shared by `/upsample` and the Upsample button, `/continue` and the Continue button, and
`/jukebox`. Every refusal is a `JukebotError`, raised before anything is written. A queued job
is announced twice: to its user (the "Queued as job #N" reply), then to the other features
through the bot's event dispatch (`job_queued`; the progress extension posts the progress message).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import logging
import math
import re
import weakref
from collections.abc import Callable, Coroutine, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import discord

from bot.errors import (
    BotLacksPermission,
    InvalidRequest,
    JobNotInServer,
    JukebotError,
    LimitReached,
    MadeInHiddenChannel,
    NotInServer,
    SampleNotInServer,
)
from bot.requests import (
    Limits,
    ValidatedJob,
    availability_note,
    build_continue,
    build_upsample,
    capacity_refusal,
    check_capacity,
    check_channel,
    song_room,
    tokens_seconds,
)
from sampler.jobspec import InvalidJobParams, JobParams, is_full_quality, parse_params
from sampler.jukebox.registry import MAX_SONG_SECONDS
from sampler.user_text import quote_user_text
from storage.errors import (
    AlreadyUpsampled,
    JobAlreadyFinished,
    NotJobOwner,
    ServerLeft,
    StorageError,
    UserJobLimitReached,
)
from storage.models import JobKind, JobStatus
from storage.records import Job, Sample, SampleInfo

if TYPE_CHECKING:
    from bot.bot import JukeBot
    from storage.store import JobStore

log = logging.getLogger(__name__)

T = TypeVar("T")
# A form (a modal) cannot be deferred: it must be Discord's first answer, within 3 s of the click.
# Checks before it that the database has not answered by then are left to the form's submission,
# which makes every check again, so a slow database costs a refusal after the form, not the form.
FORM_CHECKS_SECONDS = 1.5


async def checked_before_form(bot: JukeBot, checks: Coroutine[Any, Any, T]) -> T | None:
    """What `checks` returns (or raises), or None when they take longer than `FORM_CHECKS_SECONDS`:
    they then go on as one of the bot's tasks (cancelled when it closes), so no database call is cut
    off midway, and their outcome is dropped."""
    task = asyncio.ensure_future(checks)
    done, _ = await asyncio.wait({task}, timeout=FORM_CHECKS_SECONDS)
    if task in done:
        return task.result()
    log.warning(
        "The database did not answer the checks before a form within %s s; the form opens and its "
        "submission checks again",
        FORM_CHECKS_SECONDS,
    )
    bot.tasks.create(_outcome_dropped(task), name="checks left to a form's submission")
    return None


async def _outcome_dropped(task: asyncio.Task[Any]) -> None:
    with contextlib.suppress(Exception):  # a late refusal or a database error: the submission meets it
        await task


class OnePerMember:
    """Members with one of something under way (a clip downloading, a curation): a second one is
    refused with `refusal` while the first lasts."""

    def __init__(self, refusal: str) -> None:
        self._refusal = refusal
        self._busy: set[int] = set()

    @contextlib.contextmanager
    def held_by(self, user_id: int) -> Iterator[None]:
        if user_id in self._busy:
            raise LimitReached(self._refusal)
        self._busy.add(user_id)
        try:
            yield
        finally:
            self._busy.discard(user_id)


def guild_id_of(interaction: discord.Interaction[Any]) -> int:
    if interaction.guild_id is None:
        raise NotInServer()
    return interaction.guild_id


SECONDS_UNIT = re.compile(r"\s*(?:s|secs?|seconds?)\.?\s*$", re.IGNORECASE)
THOUSANDS_COMMA = re.compile(r"[0-9],[0-9]{3}(?![0-9])")


def parse_seconds(text: str) -> float | None:
    """The continue modal's field (`10`, `12.5`, `12,5`, `10 s`, `10 seconds`): empty means the default."""
    typed = text.strip()
    number = SECONDS_UNIT.sub("", typed)
    if not number:
        return None
    if THOUSANDS_COMMA.search(number):  # 1,000: a thousand, or one with a decimal comma?
        raise InvalidRequest(
            f"{quote_user_text(typed)} could be read two ways; type the seconds without a thousands "
            "separator, e.g. 10 or 12.5."
        )
    try:
        value = float(number.replace(",", "."))
    except ValueError:
        raise InvalidRequest(
            f"{quote_user_text(typed)} is not a number of seconds; type e.g. 10 or 12.5."
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise InvalidRequest(f"The seconds to add must be a positive number, got {quote_user_text(typed)}.")
    return value


def queued_reply(job: Job, notes: tuple[str, ...] = ()) -> str:
    lines = [
        f"Queued as job #{job.id}. Its progress is posted in <#{job.channel_id}>; cancel it with `/cancel "
        f"job:{job.id}`."
    ]
    lines.extend(f"Note: {note}" for note in notes)
    return "\n".join(lines)


# A sample lasts its asked length rounded up to whole codes: that much over the limit is within it.
LENGTH_ROUNDING_SECONDS = 0.5
# What the bot needs in a channel to post a job's progress and results there (replying to the
# message that asked for it needs the history).
POSTING_PERMISSIONS = {
    "view_channel": "View Channel",
    "send_messages": "Send Messages",
    "attach_files": "Attach Files",
    "read_message_history": "Read Message History",
}


def missing_posting_permissions(granted: discord.Permissions, *, in_thread: bool) -> list[str]:
    """The names of the permissions the bot lacks, of those it needs to post results (`granted` in a
    channel, or in a thread, which takes Send Messages in Threads instead of Send Messages)."""
    needed = {**POSTING_PERMISSIONS}
    if in_thread:
        del needed["send_messages"]
        needed["send_messages_in_threads"] = "Send Messages in Threads"
    return [label for name, label in needed.items() if not getattr(granted, name)]


def check_bot_can_post(interaction: discord.Interaction[Any]) -> None:
    """Refuse a job whose results the bot could not post in this channel (Discord says what the bot
    may do here with every interaction), rather than queue hours of work no one would see."""
    in_thread = isinstance(interaction.channel, discord.Thread)
    missing = missing_posting_permissions(interaction.app_permissions, in_thread=in_thread)
    if missing:
        raise BotLacksPermission(
            f"I cannot post results in this channel: I am missing the {', '.join(missing)} "
            f"permission{'s' if len(missing) > 1 else ''} here. Ask a moderator to grant "
            f"{'them' if len(missing) > 1 else 'it'} to me, or use me in another channel."
        )


async def cancel_queued_in_gone_channel(store: JobStore, channel_id: int) -> None:
    """A channel or thread is gone (the bot saw it deleted, or Discord says 10003 for it): its queued jobs
    would use GPU time for results nobody could see there, so they are cancelled. Running ones finish:
    their samples stay for `/sample` and `/history`."""
    try:
        cancelled = await store.cancel_queued_in_channel(channel_id)
    except Exception as exc:  # e.g. the database is away: they run, and their results are given up
        log.warning("channel %s is gone, but its queued jobs could not be cancelled: %r", channel_id, exc)
        return
    if cancelled:
        log.info("channel %s is gone: cancelled its queued jobs %s", channel_id, cancelled)


async def check_allowed_channel(bot: JukeBot, interaction: discord.Interaction[Any]) -> Limits:
    """Refuse a command that posts in a channel off the server's allow-list (`/jukebot-admin channels`):
    jobs, and the samples and pieces `/sample`, `/top` and `/curate` post. Returns the server's limits."""
    limits = await bot.limits_for(guild_id_of(interaction))
    parent_id = getattr(interaction.channel, "parent_id", None)
    check_channel(limits, interaction.channel_id or 0, parent_id, channel_of(interaction.guild))
    return limits


def channel_of(guild: discord.Guild | None) -> Callable[[int], bool] | None:
    """Whether a channel id is one of `guild`'s (None: not known, in a direct message)."""
    if guild is None:
        return None
    return lambda channel_id: guild.get_channel_or_thread(channel_id) is not None


async def check_can_enqueue(bot: JukeBot, interaction: discord.Interaction[Any]) -> Limits:
    """The channel allow-list, the bot's permission to post here and the user's running/queued job
    limits; returns the server's limits."""
    guild_id = guild_id_of(interaction)
    limits = await check_allowed_channel(bot, interaction)
    check_bot_can_post(interaction)
    mine = [job for job in await bot.store.unfinished_jobs(guild_id) if job.user_id == interaction.user.id]
    check_capacity(limits, mine)
    if bot.settings.max_jobs_per_user_all_servers:
        try:
            await bot.store.check_user_limit_all_servers(
                interaction.user.id, bot.settings.max_jobs_per_user_all_servers
            )
        except UserJobLimitReached as reached:
            raise capacity_refusal(reached) from None
    return limits


async def usable_sample(
    bot: JukeBot, interaction: discord.Interaction[Any], sample_id: int
) -> tuple[Sample, Job]:
    """The sample and the job that made it, refused unless the interaction's member may use it (`Viewer`)."""
    sample = await bot.store.get_sample(sample_id)
    return sample, await _usable_job_of(bot, interaction, sample)


async def check_usable_sample(bot: JukeBot, interaction: discord.Interaction[Any], sample_id: int) -> None:
    """Refuse a sample the interaction's member may not use (`Viewer`), without reading its audio."""
    await _usable_job_of(bot, interaction, await bot.store.get_sample_info(sample_id))


async def _usable_job_of(bot: JukeBot, interaction: discord.Interaction[Any], sample: SampleInfo) -> Job:
    guild_id = guild_id_of(interaction)
    job = await bot.store.get_job(sample.job_id)
    if job.guild_id != guild_id:
        raise SampleNotInServer(sample.id)
    if not await _may_use_job(bot, interaction, job):
        raise MadeInHiddenChannel("sample", sample.id)
    return job


async def _may_use_job(bot: JukeBot, interaction: discord.Interaction[Any], job: Job) -> bool:
    """Whether the member may use what `job` made (`Viewer`); also an upsample of a sample they made,
    wherever it was asked for: the full-quality version of their own song is theirs too (the one
    upsample of a sample may have been asked for in a channel they cannot see)."""
    if await Viewer(bot, interaction).may_use(job.channel_id, job.user_id):
        return True
    return await _upsample_of_theirs(bot, interaction, job)


async def _upsample_of_theirs(bot: JukeBot, interaction: discord.Interaction[Any], job: Job) -> bool:
    """Whether `job` upsamples a sample the interaction's member made."""
    if job.kind != JobKind.UPSAMPLE or job.parent_sample_id is None:
        return False
    parent = (await bot.store.sample_origins([job.parent_sample_id])).get(job.parent_sample_id)
    return parent is not None and parent.user_id == interaction.user.id


class Viewer:
    """What one interaction's member may use of what was made in the server: their own samples and
    jobs wherever they were made, and others' made in channels they may read (View Channel and Read
    Message History there), so a private channel's songs stay in it. Decided per channel once.

    What was made in a channel or thread that no longer exists is its maker's alone.

    Discord gives the interaction's permissions for the channel it comes from; for another channel (or
    thread) the bot's cache of the server's channels, roles and overwrites says (`_permissions_in`),
    without a request to Discord but for a channel the cache lacks (`_uncached_channel`).
    """

    def __init__(self, bot: JukeBot, interaction: discord.Interaction[Any]) -> None:
        self._bot = bot
        self._interaction = interaction
        self._readable: dict[int, bool] = {}

    async def may_use(self, channel_id: int, maker_id: int) -> bool:
        """Whether the member may use what `maker_id` made in `channel_id`."""
        if maker_id == self._interaction.user.id:
            return True
        if channel_id not in self._readable:
            self._readable[channel_id] = await self._may_read(channel_id)
        return self._readable[channel_id]

    async def may_show_here(self, channel_id: int, maker_id: int) -> bool:
        """Whether what `maker_id` made in `channel_id` may be listed or joined in a reply posted
        publicly in the interaction's channel (/top, /curate top:/user:): the member may use it, and
        everyone who reads here may read there too, as it was made here or in a channel the server's
        @everyone role may read. (Ephemeral replies keep `may_use`: only the member reads them.)"""
        return await self.may_use(channel_id, maker_id) and await self.readable_by_all_here(channel_id)

    async def readable_by_all_here(self, channel_id: int) -> bool:
        """Whether everyone who reads the interaction's channel may read `channel_id` too: it is this
        channel, or one the server's @everyone role may read (a public thread the cache lacks, an
        archived one, by its channel)."""
        if channel_id == self._interaction.channel_id or _everyone_reads(self._interaction, channel_id):
            return True
        if _permissions_in(self._interaction, channel_id) is not None:
            return False  # in the cache: `_everyone_reads` said
        uncached = await _uncached_channel(self._bot, channel_id)
        return (
            isinstance(uncached, _ThreadOf)
            and not uncached.private
            and _everyone_reads(self._interaction, uncached.parent_id)
        )

    async def _may_read(self, channel_id: int) -> bool:
        permissions = _permissions_in(self._interaction, channel_id)
        if permissions is not None:
            return _reads(permissions)
        uncached = await _uncached_channel(self._bot, channel_id)
        if uncached is _NoThread.DELETED:
            # Who could read it can no longer be told: Discord does not say which channel a deleted
            # thread was in, and that channel may still be private. What was made there stays its
            # maker's alone (`may_use` lets them), rather than become the whole server's.
            return False
        if isinstance(uncached, _ThreadOf):
            in_parent = _permissions_in(self._interaction, uncached.parent_id)
            if in_parent is None:  # the thread's channel was deleted, and the thread with it: as above
                return False
            return _reads(in_parent) and _knows_thread(uncached, self._interaction.user.id, in_parent)
        return False  # a channel the bot may not see, or Discord did not answer: not shown


def _everyone_reads(interaction: discord.Interaction[Any], channel_id: int) -> bool:
    """Whether the server's @everyone role may read `channel_id` by the bot's cache; a channel or
    thread the cache lacks, or a private thread, is not known to be readable by all."""
    guild = interaction.guild
    cached = None if guild is None else _cached_permissions(guild, channel_id, guild.default_role)
    if cached is None:
        return False
    channel, permissions = cached
    return not (isinstance(channel, discord.Thread) and channel.is_private()) and _reads(permissions)


def _reads(permissions: discord.Permissions) -> bool:
    return permissions.view_channel and permissions.read_message_history


def _knows_thread(thread: discord.Thread | _ThreadOf, user_id: int, permissions: discord.Permissions) -> bool:
    """Whether the member is known to be in the thread. The cache does not list a private thread's
    members: its owner and those who may manage threads in it are; others only from inside it (the
    interaction's own permissions)."""
    private = thread.is_private() if isinstance(thread, discord.Thread) else thread.private
    return not private or thread.owner_id == user_id or permissions.manage_threads


def _permissions_in(interaction: discord.Interaction[Any], channel_id: int) -> discord.Permissions | None:
    """The interaction's member's permissions in `channel_id`, None where the bot's cache lacks the
    channel (deleted, or a thread archived since). Discord gives the interaction's permissions for the
    channel it comes from; for another channel (or thread) the bot's cache of the server's channels,
    roles and overwrites says."""
    if interaction.channel_id == channel_id:
        return interaction.permissions
    member, guild = interaction.user, interaction.guild
    if guild is None or not isinstance(member, discord.Member):
        return discord.Permissions.none()
    cached = _cached_permissions(guild, channel_id, member)
    if cached is None:
        return None
    channel, permissions = cached
    if isinstance(channel, discord.Thread) and not _knows_thread(channel, member.id, permissions):
        return discord.Permissions.none()
    return permissions


def _cached_permissions(
    guild: discord.Guild, channel_id: int, who: discord.Member | discord.Role
) -> tuple[discord.abc.GuildChannel | discord.Thread, discord.Permissions] | None:
    """The channel or thread from the bot's cache and `who`'s permissions there (none for a thread
    whose channel the cache lacks); None where the cache lacks the channel itself."""
    channel = guild.get_channel_or_thread(channel_id)
    if channel is None:
        return None
    try:
        return channel, channel.permissions_for(who)
    except discord.ClientException:  # a thread whose channel the cache lacks
        return channel, discord.Permissions.none()


@dataclasses.dataclass(frozen=True, slots=True)
class _ThreadOf:
    """A thread the bot's cache lacks (archived, or private without the bot)."""

    parent_id: int
    private: bool
    owner_id: int | None


class _NoThread(enum.Enum):
    """A channel the bot's cache lacks that is not a thread Discord shows it."""

    DELETED = "deleted"
    HIDDEN = "hidden"  # Discord does not show it to the bot


# What Discord said, per bot, of channels its cache lacks. The cache holds every channel of a server
# but only its active threads, so an id it does not know is a deleted channel or thread, or a thread
# archived since (or private): only Discord tells them apart, and its answer does not change (a deleted
# channel stays deleted, a thread keeps its channel; a thread deleted since, `thread_deleted`, says
# so), so it is asked once per channel, not per use.
_UNCACHED: weakref.WeakKeyDictionary[discord.Client, dict[int, _ThreadOf | _NoThread]] = (
    weakref.WeakKeyDictionary()
)
# How many lookups of each channel are in flight, per bot (bounded by the lookups running at once).
_ASKING: weakref.WeakKeyDictionary[discord.Client, collections.Counter[int]] = weakref.WeakKeyDictionary()


def thread_deleted(bot: JukeBot, thread_id: int) -> None:
    """Discord said a thread was deleted: what was made there is its maker's alone from now on (an
    answer kept from when it was archived said its channel's readers may use it). Only a kept answer
    changes: Discord says any thread of any server was deleted, and one never looked up answers
    "deleted" when it is."""
    known, asking = _UNCACHED.get(bot), _ASKING.get(bot)
    if known is not None and (thread_id in known or (asking is not None and asking[thread_id] > 0)):
        # One being looked up: its answer, taken before the deletion, must not overwrite this.
        known[thread_id] = _NoThread.DELETED


# An unanswered lookup counts as "may not see" (and is asked again next time): bounded, as it may
# come before an answer that must reach Discord within 3 s (the Continue button's form).
UNCACHED_LOOKUP_SECONDS = 1.0


async def _uncached_channel(bot: JukeBot, channel_id: int) -> _ThreadOf | _NoThread | None:
    known = _UNCACHED.setdefault(bot, {})
    if channel_id in known:
        return known[channel_id]
    asking = _ASKING.setdefault(bot, collections.Counter())
    asking[channel_id] += 1
    try:
        channel = await asyncio.wait_for(bot.fetch_channel(channel_id), UNCACHED_LOOKUP_SECONDS)
    except discord.NotFound:
        found: _ThreadOf | _NoThread = _NoThread.DELETED
    except discord.Forbidden:
        found = _NoThread.HIDDEN
    except (discord.HTTPException, discord.RateLimited, discord.InvalidData, TimeoutError):
        log.warning("could not look up channel %s to decide who may use its samples", channel_id)
        return None
    else:
        if isinstance(channel, discord.Thread) and channel.parent_id is not None:
            found = _ThreadOf(channel.parent_id, channel.is_private(), channel.owner_id)
        else:
            found = _NoThread.HIDDEN  # a channel that is not in the cache but exists: not one the bot may see
    finally:
        asking[channel_id] -= 1
        if asking[channel_id] <= 0:
            del asking[channel_id]
    return known.setdefault(channel_id, found)  # a deletion heard meanwhile stands


def _parent_params(job: Job) -> JobParams:
    try:
        return parse_params(job.params)
    except InvalidJobParams as exc:
        raise JukebotError(
            f"The job that made this sample has parameters this bot cannot reuse ({exc})."
        ) from None


async def request_upsample(
    bot: JukeBot, interaction: discord.Interaction[Any], sample_id: int, *, reply_to: int | None = None
) -> Job:
    """Queue the upsampling of a preview and announce it (the interaction is deferred)."""
    sample, parent_job = await usable_sample(bot, interaction, sample_id)
    if parent_job.kind == JobKind.CURATE:
        raise InvalidRequest(
            f"Sample #{sample_id} is a curated piece joined from other samples; upsample those instead "
            "(its message lists them)."
        )
    parent_params = _parent_params(parent_job)
    if is_full_quality(parent_params):
        raise InvalidRequest(f"Sample #{sample_id} is already full quality; there is nothing to upsample.")
    if 2 not in sample.levels:
        raise InvalidRequest(f"Sample #{sample_id} has no top-level codes stored, so it cannot be upsampled.")
    earlier = await bot.store.upsample_covering(sample_id)
    if earlier is not None:  # before the limits: waiting for a place would not make it upsampled
        raise await _already_upsampled(bot, interaction, earlier)
    limits = await check_can_enqueue(bot, interaction)
    top_tokens = await bot.store.codes_count(sample_id, 2)
    if top_tokens is not None and song_room(top_tokens) < 0:  # made long by continues
        raise InvalidRequest(
            f"Sample #{sample_id} is {tokens_seconds(top_tokens)} long, and the models take songs shorter "
            f"than {MAX_SONG_SECONDS:g} s, so it cannot be upsampled."
        )
    if sample.duration_seconds > limits.max_length_seconds + LENGTH_ROUNDING_SECONDS:
        # Upsampling costs GPU time for every second of the sample (continues can make it long).
        raise LimitReached(
            f"Sample #{sample_id} is {sample.duration_seconds:.0f} s long, and this server takes songs of "
            f"at most {limits.max_length_seconds:g} s to full quality. Ask an admin to raise the "
            "longest song (`/jukebot-admin limits max_length`)."
        )
    validated = build_upsample(parent_params.for_sample(sample.index))
    return await enqueue_and_announce(
        bot,
        interaction,
        JobKind.UPSAMPLE,
        sample.model,
        validated,
        parent_sample_id=sample_id,
        reply_to=reply_to,
    )


async def request_continue(
    bot: JukeBot,
    interaction: discord.Interaction[Any],
    sample_id: int,
    seconds: float | None,
    *,
    reply_to: int | None = None,
) -> Job:
    """Queue a continuation of a sample and announce it (the interaction is deferred)."""
    sample, parent_job = await usable_sample(bot, interaction, sample_id)
    limits = await check_can_enqueue(bot, interaction)
    validated = build_continue(
        limits,
        _parent_params(parent_job).for_sample(sample.index),
        seconds,
        sample_id=sample_id,
        parent_tokens=await bot.store.codes_count(sample_id, 2),
    )
    return await enqueue_and_announce(
        bot,
        interaction,
        JobKind.CONTINUE,
        sample.model,
        validated,
        parent_sample_id=sample_id,
        reply_to=reply_to,
    )


async def _already_upsampled(
    bot: JukeBot, interaction: discord.Interaction[Any], earlier: AlreadyUpsampled
) -> InvalidRequest:
    """The refusal of a second upsample of one sample, saying where the first one's result is; its
    job and sample numbers only to a member who may use them (`Viewer`)."""
    sample_id, job_id = earlier.sample_id, earlier.job_id
    first = await bot.store.get_job(job_id)
    reads_there = await Viewer(bot, interaction).may_use(first.channel_id, first.user_id)
    if not reads_there and not await _upsample_of_theirs(bot, interaction, first):
        done = earlier.status == JobStatus.SUCCEEDED.value
        being = "was upsampled already" if done else "is already being upsampled"
        return InvalidRequest(
            f"Sample #{sample_id} {being}, in a channel you cannot see; whoever asked for it "
            "there can share its full-quality version."
        )
    if earlier.status == JobStatus.CANCELLING.value:  # it posts nothing, but runs until it stops
        return InvalidRequest(
            f"Sample #{sample_id}'s upsample, job #{job_id}, is being cancelled and posts nothing: "
            "upsample it again once that job has stopped (its progress message says so)."
        )
    if earlier.status != JobStatus.SUCCEEDED.value:
        where = (
            "is posted when that job ends"
            if reads_there  # else posted where they cannot see it: they ask again then
            else f"is posted in another channel when that job ends; `/upsample sample:{sample_id}` then "
            "says how to post it here"
        )
        return InvalidRequest(
            f"Sample #{sample_id} is already being upsampled as job #{job_id}; its full-quality "
            f"version {where}."
        )
    made = [sample.id for sample in await bot.store.samples_for_job(job_id)]
    again = f" (`/sample {made[0]}` posts it again)" if made else ""
    return InvalidRequest(
        f"Sample #{sample_id} was upsampled already, by job #{job_id}: its full-quality version is "
        f"sample {', '.join(f'#{made_id}' for made_id in made)}{again}."
    )


async def enqueue_and_announce(
    bot: JukeBot,
    interaction: discord.Interaction[Any],
    kind: JobKind,
    model: str,
    validated: ValidatedJob,
    *,
    parent_sample_id: int | None = None,
    prime_id: int | None = None,
    reply_to: int | None = None,
) -> Job:
    """Queue the job (the store counts the user's jobs against the server's limits as it inserts, read
    in its transaction: an admin's change since the request's checks holds for it too), answer the
    (deferred) interaction, then announce the job to the other features.

    The reply goes first, so the user's "Queued as job #N" arrives before the progress message; it
    says so when no worker serves the model yet.
    """
    served = availability_note(model, await bot.store.served_models())
    if served is not None:
        validated = dataclasses.replace(validated, notes=(*validated.notes, served))
    guild_id = guild_id_of(interaction)

    async def enqueue() -> int:
        return await bot.store.enqueue(
            kind=kind,
            model=model,
            params=validated.params.to_json(),
            channel_id=interaction.channel_id or 0,
            user_id=interaction.user.id,
            guild_id=guild_id,
            parent_sample_id=parent_sample_id,
            prime_id=prime_id,
            max_running_per_user=bot.settings.max_running_jobs_per_user,
            max_queued_per_user=bot.settings.max_queued_jobs_per_user,
            server_overrides=True,
            max_unfinished_per_user_all_servers=bot.settings.max_jobs_per_user_all_servers or None,
        )

    try:
        try:
            job_id = await enqueue()
        except ServerLeft:
            if bot.get_guild(guild_id) is None:
                raise
            # Back in the server, but the database missed it (away when the bot joined): say so now.
            await bot.store.mark_guilds_present([guild_id])
            job_id = await enqueue()
    except UserJobLimitReached as reached:
        raise capacity_refusal(reached) from None
    except AlreadyUpsampled as earlier:
        raise await _already_upsampled(bot, interaction, earlier) from None
    except StorageError as exc:
        raise JukebotError(str(exc)) from None
    interaction.extras["job_id"] = job_id
    bot.note_upload_limit(interaction)
    job = await bot.store.get_job(job_id)
    try:
        await interaction.followup.send(queued_reply(job, validated.notes), ephemeral=True)
    finally:  # a reply Discord did not take holds up no progress message
        bot.dispatch("job_queued", job, reply_to)
    return job


async def cancel_rights(bot: JukeBot, interaction: discord.Interaction[Any], job_id: int) -> tuple[Job, bool]:
    """The job the interaction's user may cancel, and whether they do so as a moderator; refused
    (`JukebotError`/`StorageError`) when it is in another server, not theirs, or finished.

    Members who may manage messages in the job's channel moderate it: they stop anyone's job there
    (a runaway queue, an offensive prompt) without asking the person who started it. Manage
    Messages in one channel is no power over the jobs of another (`may_moderate`).
    """
    found = await bot.store.get_job(job_id)
    if found.guild_id != guild_id_of(interaction):
        raise JobNotInServer(job_id)
    moderating = found.user_id != interaction.user.id
    if moderating and not may_moderate(interaction, found.channel_id):
        raise NotJobOwner(job_id)
    if found.finished:
        raise JobAlreadyFinished(job_id, found.status.value)
    return found, moderating


def may_moderate(interaction: discord.Interaction[Any], channel_id: int) -> bool:
    """Whether the interaction's member may manage messages in `channel_id`; a channel the bot's
    cache lacks gives no such right."""
    permissions = _permissions_in(interaction, channel_id)
    return permissions is not None and permissions.manage_messages


async def cancel_job(bot: JukeBot, interaction: discord.Interaction[Any], job_id: int) -> str:
    """Cancel `job_id` for the interaction's user (`/cancel`, the Cancel button's confirmation) by the
    rules of `cancel_rights`; returns the reply."""
    found, moderating = await cancel_rights(bot, interaction, job_id)
    status = await bot.store.request_cancel(
        job_id,
        None if moderating else interaction.user.id,
        reason=f"by a moderator, <@{interaction.user.id}>" if moderating else None,
    )
    bot.dispatch("job_cancel_requested", job_id)
    if moderating:
        log.info("job %s of user %s cancelled by moderator %s", job_id, found.user_id, interaction.user.id)
    whose = f"Job #{job_id} (started by <@{found.user_id}>)" if moderating else f"Job #{job_id}"
    if status == JobStatus.CANCELLED:
        before = "it was waiting to be tried again" if found.attempts else "it had not started"
        return f"{whose} is cancelled; {before}."
    # a job past its last step (encoding its audio) finishes all the same
    return f"{whose} is stopping after its current step; nothing of it is posted, unless it finishes first."


def cancel_question(job: Job, moderating: bool) -> str:
    """What the Cancel button asks before it cancels: a stray click must not end hours of sampling."""
    whose = f"job #{job.id} (started by <@{job.user_id}>)" if moderating else f"job #{job.id}"
    if job.status == JobStatus.QUEUED:
        return f"Cancel {whose}? It has not started{' this attempt' if job.attempts else ''}."
    done = f"{int(job.progress * 100)}% done" if job.status == JobStatus.RUNNING else "stopping already"
    return f"Cancel {whose}? It is running ({done}); what it sampled so far is not posted."
