"""What the commands and buttons do once they parsed their input: check limits, enqueue, announce.

Shared by `/upsample` and the Upsample button, `/continue` and the Continue button, and
`/jukebox`. Every refusal is a `JukebotError`, raised before anything is written. A queued job
is announced twice: to its user (the "Queued as job #N" reply), then to the other features
through the bot's event dispatch (`job_queued`; the progress extension posts the progress message).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import TYPE_CHECKING, Any

import discord

from bot.errors import (
    BotLacksPermission,
    InvalidRequest,
    JobNotInServer,
    JukebotError,
    LimitReached,
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
)
from sampler.jobspec import InvalidJobParams, JobParams, is_full_quality, parse_params
from sampler.user_text import quote_user_text
from storage.errors import (
    AlreadyUpsampled,
    JobAlreadyFinished,
    NotJobOwner,
    StorageError,
    UserJobLimitReached,
)
from storage.models import JobKind, JobStatus
from storage.records import Job, Sample

if TYPE_CHECKING:
    from bot.bot import JukeBot

log = logging.getLogger(__name__)


def guild_id_of(interaction: discord.Interaction[Any]) -> int:
    if interaction.guild_id is None:
        raise NotInServer()
    return interaction.guild_id


def parse_seconds(text: str) -> float | None:
    """The continue modal's field: empty means the default."""
    text = text.strip().removesuffix("s").strip()
    if not text:
        return None
    try:
        value = float(text.replace(",", "."))
    except ValueError:
        raise InvalidRequest(
            f"{quote_user_text(text)} is not a number of seconds; type e.g. 10 or 12.5."
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise InvalidRequest(f"The seconds to add must be a positive number, got {quote_user_text(text)}.")
    return value


def queued_reply(job: Job, notes: tuple[str, ...] = ()) -> str:
    lines = [
        f"Queued as job #{job.id}. Its progress is posted in <#{job.channel_id}>; cancel it with `/cancel "
        f"{job.id}`."
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


def check_bot_can_post(interaction: discord.Interaction[Any]) -> None:
    """Refuse a job whose results the bot could not post in this channel (Discord says what the bot
    may do here with every interaction), rather than queue hours of work no one would see."""
    granted = interaction.app_permissions
    in_thread = isinstance(interaction.channel, discord.Thread)
    needed = {**POSTING_PERMISSIONS}
    if in_thread:
        del needed["send_messages"]
        needed["send_messages_in_threads"] = "Send Messages in Threads"
    missing = [label for name, label in needed.items() if not getattr(granted, name)]
    if missing:
        raise BotLacksPermission(
            f"I cannot post results in this channel: I am missing the {', '.join(missing)} "
            f"permission{'s' if len(missing) > 1 else ''} here. Ask a moderator to grant "
            f"{'them' if len(missing) > 1 else 'it'} to me, or use me in another channel."
        )


async def check_can_enqueue(bot: JukeBot, interaction: discord.Interaction[Any]) -> Limits:
    """The channel allow-list, the bot's permission to post here and the user's running/queued job
    limits; returns the server's limits."""
    guild_id = guild_id_of(interaction)
    limits = await bot.limits_for(guild_id)
    check_channel(limits, interaction.channel_id or 0, getattr(interaction.channel, "parent_id", None))
    check_bot_can_post(interaction)
    mine = [job for job in await bot.store.unfinished_jobs(guild_id) if job.user_id == interaction.user.id]
    check_capacity(limits, mine)
    return limits


async def sample_in_guild(bot: JukeBot, sample_id: int, guild_id: int) -> tuple[Sample, Job]:
    """The sample and the job that made it, refusing samples made in another server."""
    sample = await bot.store.get_sample(sample_id)
    return sample, await _maker_in_guild(bot, sample.job_id, sample_id, guild_id)


async def check_sample_in_guild(bot: JukeBot, interaction: discord.Interaction[Any], sample_id: int) -> None:
    """Refuse a sample made in another server (or any sample from a direct message), without its audio."""
    guild_id = guild_id_of(interaction)
    info = await bot.store.get_sample_info(sample_id)
    await _maker_in_guild(bot, info.job_id, sample_id, guild_id)


async def _maker_in_guild(bot: JukeBot, job_id: int, sample_id: int, guild_id: int) -> Job:
    job = await bot.store.get_job(job_id)
    if job.guild_id != guild_id:
        raise SampleNotInServer(sample_id)
    return job


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
    guild_id = guild_id_of(interaction)
    sample, parent_job = await sample_in_guild(bot, sample_id, guild_id)
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
    limits = await check_can_enqueue(bot, interaction)
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
        limits,
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
    guild_id = guild_id_of(interaction)
    sample, parent_job = await sample_in_guild(bot, sample_id, guild_id)
    limits = await check_can_enqueue(bot, interaction)
    validated = build_continue(limits, _parent_params(parent_job).for_sample(sample.index), seconds)
    return await enqueue_and_announce(
        bot,
        interaction,
        limits,
        JobKind.CONTINUE,
        sample.model,
        validated,
        parent_sample_id=sample_id,
        reply_to=reply_to,
    )


async def _already_upsampled(bot: JukeBot, earlier: AlreadyUpsampled) -> InvalidRequest:
    """The refusal of a second upsample of one sample, saying where the first one's result is."""
    sample_id, job_id = earlier.sample_id, earlier.job_id
    if earlier.status != JobStatus.SUCCEEDED.value:
        return InvalidRequest(
            f"Sample #{sample_id} is already being upsampled as job #{job_id}; its full-quality version "
            "is posted when that job ends."
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
    limits: Limits,
    kind: JobKind,
    model: str,
    validated: ValidatedJob,
    *,
    parent_sample_id: int | None = None,
    prime_id: int | None = None,
    reply_to: int | None = None,
) -> Job:
    """Queue the job (the store counts the user's jobs against `limits` as it inserts), answer the
    (deferred) interaction, then announce the job to the other features.

    The reply goes first, so the user's "Queued as job #N" arrives before the progress message; it
    says so when no worker serves the model yet.
    """
    served = availability_note(model, await bot.store.served_models())
    if served is not None:
        validated = dataclasses.replace(validated, notes=(*validated.notes, served))
    try:
        job_id = await bot.store.enqueue(
            kind=kind,
            model=model,
            params=validated.params.to_json(),
            channel_id=interaction.channel_id or 0,
            user_id=interaction.user.id,
            guild_id=guild_id_of(interaction),
            parent_sample_id=parent_sample_id,
            prime_id=prime_id,
            max_running_per_user=limits.max_running_jobs_per_user,
            max_queued_per_user=limits.max_queued_jobs_per_user,
        )
    except UserJobLimitReached as reached:
        raise capacity_refusal(reached) from None
    except AlreadyUpsampled as earlier:
        raise await _already_upsampled(bot, earlier) from None
    except StorageError as exc:
        raise JukebotError(str(exc)) from None
    interaction.extras["job_id"] = job_id
    bot.note_upload_limit(interaction)
    job = await bot.store.get_job(job_id)
    await interaction.followup.send(queued_reply(job, validated.notes), ephemeral=True)
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
    """Whether the interaction's member may manage messages in `channel_id`. Discord gives the
    interaction's permissions for the channel it comes from; for another channel (or thread) the
    bot's cache of the server's channels, roles and overwrites says, and a channel it does not
    know gives no such right."""
    if interaction.channel_id == channel_id:
        return interaction.permissions.manage_messages
    member, guild = interaction.user, interaction.guild
    if guild is None or not isinstance(member, discord.Member):
        return False
    channel = guild.get_channel_or_thread(channel_id)
    return channel is not None and channel.permissions_for(member).manage_messages


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
