"""The buttons under every posted sample: vote, upsample, continue (and the continue modal); and
the Cancel button under a job's progress message while it is queued or running (and the private
question it asks first).

Each is a `discord.ui.DynamicItem` whose `custom_id` carries the sample (or job) id; the rest of the
state is in the database. The extension that owns each registers it when it loads (samples: the
sample buttons, jobs: Cancel and its confirmation), so buttons on messages posted before a restart
keep working.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, cast

import discord

from bot import actions
from bot.errors import DISCORD_FAILURES, InvalidRequest, JukebotError, StorageOutage, discord_said
from bot.requests import (
    DEFAULT_CONTINUE_SECONDS,
    Limits,
    check_continuable,
    default_continue_seconds,
    stored_id,
)
from storage.models import JobStatus
from storage.records import Job

if TYPE_CHECKING:
    from bot.bot import JukeBot

VOTE_EMOJI = "👍"
MAX_SNOWFLAKE = 2**63 - 1  # Discord's ids are 64-bit, and no message id reaches the top bit


def _bot(interaction: discord.Interaction[Any]) -> JukeBot:
    return cast("JukeBot", interaction.client)


class VoteButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"jukebot:vote:(?P<sample_id>[0-9]+)"
):
    def __init__(self, sample_id: int, votes: int = 0) -> None:
        super().__init__(
            discord.ui.Button(
                label=f"{VOTE_EMOJI} {votes}",
                style=discord.ButtonStyle.secondary,
                custom_id=f"jukebot:vote:{sample_id}",
            )
        )
        self.sample_id = sample_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> VoteButton:
        return cls(int(match["sample_id"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        bot = _bot(interaction)
        async with bot.reporting_errors(interaction):
            stored_id(self.sample_id, "sample")  # a forged custom_id may carry any number
            await interaction.response.defer()  # before the database, which may be slow or busy writing
            # The custom id is whatever the client sent: only samples this member may use get votes.
            await actions.check_usable_sample(bot, interaction, self.sample_id)
            # The label edit redraws the clicked message's whole row: only on a message that really
            # carries this button, or a forged click would swap any message's buttons for these.
            message = await _clicked_message(interaction)
            shown = set() if message is None else _custom_ids(message)
            if message is None or f"jukebot:vote:{self.sample_id}" not in shown:
                raise InvalidRequest(
                    f"This message has no vote button for sample #{self.sample_id}, so your vote was "
                    "not counted. Vote under the sample's own message, or post it again with "
                    f"`/sample {self.sample_id}`."
                )
            voted, _ = await bot.store.toggle_vote(self.sample_id, interaction.user.id)
            can_upsample = f"jukebot:upsample:{self.sample_id}" in shown
            can_continue = f"jukebot:continue:{self.sample_id}" in shown
            # Clicks at once each edit the label: one at a time per message, each with the count as
            # stored just before, so the last edit to land shows every vote (not its own click's count).
            done = "Your vote is counted" if voted else "Your vote is taken back"
            async with _LABEL_EDITS.one_at_a_time(message.id):
                try:
                    votes = await bot.store.vote_count(self.sample_id)
                except Exception as exc:  # the vote is stored: "try again" would take it back
                    if StorageOutage.of(exc) is None:
                        raise
                    raise JukebotError(
                        f"{done}, but the button could not show the new count: the bot lost its "
                        "database just after. It shows it at the next vote."
                    ) from exc
                try:
                    await interaction.edit_original_response(
                        view=sample_view(self.sample_id, votes, can_upsample, can_continue)
                    )
                except DISCORD_FAILURES as exc:
                    # The vote is stored: an apology would read as "not counted", and a second click
                    # takes it back. Say what counts (Discord caps edits of messages over an hour old).
                    raise JukebotError(
                        f"{done}: sample #{self.sample_id} has {votes} vote{'' if votes == 1 else 's'} "
                        f"now. The button could not show it (Discord said: {discord_said(exc)})."
                    ) from exc


async def _clicked_message(interaction: discord.Interaction[Any]) -> discord.Message | None:
    """The clicked message as Discord stores it, None if it is gone: the copy that comes with a
    forged click may list the forged button too. After a deferred update the original response is
    the clicked message, read with the interaction's token (no channel permission needed)."""
    if interaction.message is None:
        return None
    try:
        return await interaction.original_response()
    except discord.NotFound:
        return None


async def _require_sample_button(
    bot: JukeBot, interaction: discord.Interaction[Any], action: str, sample_id: int
) -> None:
    """Refuse a click on a message that, as Discord stores it, does not carry the `action` button
    (upsample, continue) of `sample_id`: the copy that comes with a forged click may list it too, and the
    job would reply to that message. Read from the channel: a request for a job needs Read Message
    History there anyway, and without it the request's own checks refuse it, saying so."""
    refusal = (
        f"This message has no {action.capitalize()} button for sample #{sample_id}, so nothing was queued. "
        f"Use the button under the sample's own message, or `/{action} {sample_id}`."
    )
    clicked = interaction.message
    if clicked is None:
        raise InvalidRequest(refusal)
    channel = bot.get_partial_messageable(clicked.channel.id, guild_id=interaction.guild_id)
    try:
        stored = await channel.fetch_message(clicked.id)
    except discord.Forbidden:
        return
    except discord.NotFound:
        raise InvalidRequest(refusal) from None
    if f"jukebot:{action}:{sample_id}" not in _custom_ids(stored):
        raise InvalidRequest(refusal)


class _OneAtATime:
    """A lock per key, held by one task at a time; a key's lock goes once nobody holds or awaits it."""

    def __init__(self) -> None:
        self._locks: dict[int, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def one_at_a_time(self, key: int) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


_LABEL_EDITS = _OneAtATime()  # by message id: one bot process's edits of a vote button's label


class UpsampleButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"jukebot:upsample:(?P<sample_id>[0-9]+)"
):
    def __init__(self, sample_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Upsample", style=discord.ButtonStyle.primary, custom_id=f"jukebot:upsample:{sample_id}"
            )
        )
        self.sample_id = sample_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> UpsampleButton:
        return cls(int(match["sample_id"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        bot = _bot(interaction)
        async with bot.reporting_errors(interaction):
            stored_id(self.sample_id, "sample")  # a forged custom_id may carry any number
            await interaction.response.defer(ephemeral=True, thinking=True)
            await _require_sample_button(bot, interaction, "upsample", self.sample_id)
            reply_to = interaction.message.id if interaction.message else None
            await actions.request_upsample(bot, interaction, self.sample_id, reply_to=reply_to)


class ContinueButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"jukebot:continue:(?P<sample_id>[0-9]+)"
):
    def __init__(self, sample_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Continue",
                style=discord.ButtonStyle.secondary,
                custom_id=f"jukebot:continue:{sample_id}",
            )
        )
        self.sample_id = sample_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> ContinueButton:
        return cls(int(match["sample_id"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        bot = _bot(interaction)
        async with bot.reporting_errors(interaction):
            stored_id(self.sample_id, "sample")  # a forged custom_id may carry any number
            # Refusals first, so none comes only after the user filled in the form.
            limits = await actions.checked_before_form(bot, self._refusals_first(bot, interaction))
            reply_to = interaction.message.id if interaction.message else None
            form = ContinueModal(self.sample_id, reply_to)
            # (filled in as `/continue` without `seconds` reads it: within this server's longest song)
            seconds = default_continue_seconds(limits.max_length_seconds if limits else None)
            form.seconds.default = f"{seconds:g}"
            await interaction.response.send_modal(form)
            form.stop()  # `submit_continue_form` answers it, in this process or the next one

    async def _refusals_first(self, bot: JukeBot, interaction: discord.Interaction[Any]) -> Limits:
        await _require_sample_button(bot, interaction, "continue", self.sample_id)
        await actions.check_usable_sample(bot, interaction, self.sample_id)
        limits = await actions.check_can_enqueue(bot, interaction)
        check_continuable(self.sample_id, await bot.store.codes_count(self.sample_id, 2))
        return limits


# The seconds field: room for what the README says it reads ("10 seconds", "120.5 s").
CONTINUE_FORM_CHARS = 16


class ContinueModal(discord.ui.Modal, title="Continue this sample"):
    """The Continue form. Its whole state is in its custom_id, and the samples extension answers
    every submission (`submit_continue_form`): a form opened before a restart still works."""

    seconds: discord.ui.TextInput[ContinueModal] = discord.ui.TextInput(
        label="Seconds to add",
        custom_id="seconds",
        default=f"{DEFAULT_CONTINUE_SECONDS:g}",
        max_length=CONTINUE_FORM_CHARS,
        required=False,
    )

    def __init__(self, sample_id: int, reply_to: int | None) -> None:
        reply = f":{reply_to}" if reply_to is not None else ""
        super().__init__(custom_id=f"jukebot:continue-modal:{sample_id}{reply}")


CONTINUE_FORM = re.compile(r"jukebot:continue-modal:(?P<sample_id>[0-9]+)(?::(?P<reply_to>[0-9]+))?")


async def submit_continue_form(interaction: discord.Interaction[Any]) -> None:
    """Queue the continuation a submitted Continue form asks for; other interactions are left alone."""
    data = cast("dict[str, Any]", interaction.data or {})
    found = CONTINUE_FORM.fullmatch(str(data.get("custom_id", "")))
    if interaction.type != discord.InteractionType.modal_submit or found is None:
        return
    bot = _bot(interaction)
    async with bot.reporting_errors(interaction):
        sample_id = stored_id(int(found["sample_id"]), "sample")
        reply_to = _form_reply_target(interaction, found["reply_to"])
        seconds = actions.parse_seconds(form_value(data, "seconds"))
        await interaction.response.defer(ephemeral=True, thinking=True)
        if interaction.message is not None:  # again: the checks before the form may have been too slow
            await _require_sample_button(bot, interaction, "continue", sample_id)
        await actions.request_continue(bot, interaction, sample_id, seconds, reply_to=reply_to)


def _form_reply_target(interaction: discord.Interaction[Any], in_custom_id: str | None) -> int | None:
    """The message the job's posts reply to: the one whose Continue button opened the form (Discord
    sends it with the submission), else the id the form's custom_id kept. A forged one may carry any
    number: one that is no message id would make every post of the job fail, so none is used."""
    if interaction.message is not None:
        return interaction.message.id
    value = int(in_custom_id) if in_custom_id else None
    return value if value is not None and 0 < value <= MAX_SNOWFLAKE else None


def form_value(data: dict[str, Any], custom_id: str) -> str:
    """A submitted form's text input (in rows, or in labels), '' when absent."""
    stack: list[Any] = list(data.get("components", []))
    while stack:
        component = stack.pop()
        if component.get("custom_id") == custom_id and "value" in component:
            return str(component["value"] or "")
        stack.extend(component.get("components", []) or [])
        if "component" in component:
            stack.append(component["component"])
    return ""


def _custom_ids(message: discord.Message) -> set[str]:
    found: set[str] = set()
    stack: list[Any] = list(message.components)
    while stack:
        component = stack.pop()
        custom_id = getattr(component, "custom_id", None)
        if custom_id:
            found.add(custom_id)
        stack.extend(getattr(component, "children", []) or [])
    return found


def sample_view(sample_id: int, votes: int, can_upsample: bool, can_continue: bool = True) -> discord.ui.View:
    """One row under a sample: vote (with the count), Upsample (previews only), Continue (unless it
    cannot be continued at all)."""
    view = discord.ui.View(timeout=None)
    view.add_item(VoteButton(sample_id, votes))
    if can_upsample:
        view.add_item(UpsampleButton(sample_id))
    if can_continue:
        view.add_item(ContinueButton(sample_id))
    return view


DYNAMIC_ITEMS = (VoteButton, UpsampleButton, ContinueButton)


class CancelButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"jukebot:cancel:(?P<job_id>[0-9]+)"
):
    """Under a job's progress message: asks (privately) before it cancels, by `/cancel`'s rules."""

    def __init__(self, job_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Cancel", style=discord.ButtonStyle.danger, custom_id=f"jukebot:cancel:{job_id}"
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> CancelButton:
        return cls(int(match["job_id"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        bot = _bot(interaction)
        async with bot.reporting_errors(interaction):
            stored_id(self.job_id, "job")  # a forged custom_id may carry any number
            await interaction.response.defer(ephemeral=True, thinking=True)  # before reading the store
            job, moderating = await actions.cancel_rights(bot, interaction, self.job_id)
            confirm = discord.ui.View(timeout=None)
            confirm.add_item(ConfirmCancelButton(self.job_id))
            await interaction.followup.send(
                actions.cancel_question(job, moderating), view=confirm, ephemeral=True
            )


class ConfirmCancelButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"jukebot:cancel-confirm:(?P<job_id>[0-9]+)"
):
    """The "Yes, cancel it" under the Cancel button's question; the rules are checked again."""

    def __init__(self, job_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label=f"Yes, cancel job #{job_id}",
                style=discord.ButtonStyle.danger,
                custom_id=f"jukebot:cancel-confirm:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> ConfirmCancelButton:
        return cls(int(match["job_id"]))

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        bot = _bot(interaction)
        async with bot.reporting_errors(interaction):
            stored_id(self.job_id, "job")  # a forged custom_id may carry any number
            # The answer replaces the clicked message: only the private question may be it, or a
            # forged click would rewrite any public message (and take its buttons away).
            clicked = interaction.message
            if clicked is None or not clicked.flags.ephemeral:
                raise InvalidRequest(
                    "This button works only under the private question the Cancel button asks; "
                    f"nothing was cancelled. To cancel job #{self.job_id}, use the Cancel button "
                    "under its progress message, or `/cancel`."
                )
            await interaction.response.defer()  # the cancel may wait for a writer
            # The question about another job (the copy in a forged click may list this button too).
            asked = await _clicked_message(interaction)
            if asked is None or f"jukebot:cancel-confirm:{self.job_id}" not in _custom_ids(asked):
                raise InvalidRequest(
                    f"This question is not about job #{self.job_id}; nothing was cancelled. To cancel "
                    f"job #{self.job_id}, use the Cancel button under its progress message, or `/cancel`."
                )
            message = await actions.cancel_job(bot, interaction, self.job_id)
            await interaction.edit_original_response(content=message, view=None)


CANCEL_ITEMS = (CancelButton, ConfirmCancelButton)


# A job that can still be stopped: queued (also while waiting to be tried again) or running.
CANCELLABLE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})


def progress_view(job: Job) -> discord.ui.View | None:
    """The components of a job's progress message: Cancel while it can be stopped, then none."""
    if job.status not in CANCELLABLE:
        return None
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job.id))
    return view
