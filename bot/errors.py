"""Errors the bot shows to the person who typed the command: one class per kind of refusal.

`str(error)` is the whole reply, a sentence or two saying what was wrong and what to do
instead. The central app-command error handler (`bot.bot.JukeTree.on_error`) sends it
ephemerally; a full disk or an unreachable database (`StorageOutage`) gets a reply saying so,
anything else that is not a `JukebotError` a short apology; both with an error id in the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum

import aiohttp
import discord

from storage.errors import Outage, outage_of

MAX_MESSAGE_CHARS = 2000  # Discord refuses longer message content (error 50035) and the user hears nothing


class JukebotError(Exception):
    """Base class: a refusal whose message is fit to show the user as it is."""


class InvalidRequest(JukebotError):
    """An option value that cannot be used (out of range, contradicting another option, …)."""


class LimitReached(JukebotError):
    """A per-user, per-job or per-server limit refused the request; says which and until when."""


class ChannelNotAllowed(JukebotError):
    """The server restricted the bot to some channels and this is not one of them."""


class BotLacksPermission(JukebotError):
    """The bot may not post (or attach files) where the request was made; says which permission."""


class UnknownLabel(JukebotError):
    """An artist or genre the chosen model does not know; the message lists the closest matches."""


class AttachmentRejected(JukebotError):
    """The attached clip cannot be used as a prime (not audio, corrupt, empty, too long, too large)."""


class SampleNotInServer(JukebotError):
    def __init__(self, sample_id: int) -> None:
        super().__init__(
            f"Sample #{sample_id} was made in another server; you can only use samples made here. "
            "See /top or /history for this server's samples."
        )
        self.sample_id = sample_id


class MadeInHiddenChannel(JukebotError):
    """A sample or job made in a channel the member may not read (see `bot.actions.Viewer`)."""

    def __init__(self, what: str, number: int) -> None:
        super().__init__(
            f"{what.capitalize()} #{number} was made in a channel you cannot see; you can only use "
            f"{what}s made in channels you can read, and your own."
        )
        self.number = number


class JobNotInServer(JukebotError):
    def __init__(self, job_id: int) -> None:
        super().__init__(f"Job #{job_id} belongs to another server; see /queue for your jobs here.")
        self.job_id = job_id


class NotInServer(JukebotError):
    """A command that only makes sense inside a server was used in a direct message."""

    def __init__(self) -> None:
        super().__init__("This command works only in a server channel, not in direct messages.")


class StorageOutage(Enum):
    """The store itself failed: not the user's fault, nothing saved before is lost, retrying later works.
    One member per `storage.errors.Outage`, which decides which (`of`)."""

    DISK_FULL = Outage.DISK_FULL.value
    UNREACHABLE = Outage.UNREACHABLE.value
    BUSY = Outage.BUSY.value

    def reply(self, error_id: str) -> str:
        if self is StorageOutage.DISK_FULL:
            problem = "The bot's storage is full, so this could not be saved"
            retry = "please try again later"
        elif self is StorageOutage.BUSY:
            problem = "The bot's database is busy with other work, so this could not be done"
            retry = "please try again in a minute"
        else:
            problem = "The bot cannot reach its database right now, so this could not be done"
            retry = "please try again in a few minutes"
        return (
            f"{problem}. Nothing you made before was lost, and the operators have been told "
            f"({error_id}); {retry}."
        )

    @classmethod
    def of(cls, error: BaseException) -> StorageOutage | None:
        """The outage behind `error` (or the errors it wraps), or None for anything else."""
        outage = outage_of(error, from_store=False)
        return None if outage is None else cls[outage.name]


def stored_all_the_same(job_id: int, outage: StorageOutage | None) -> str:
    """The reply to a failure just after the job was stored (queued, or a curated piece made): what was
    asked is done, and asking again would do it twice."""
    went_wrong = "the bot lost its database" if outage is not None else "something went wrong on our side"
    return (
        f"Job #{job_id} is stored all the same, though {went_wrong} just after (logged under job "
        f"#{job_id}). Its results are posted in this channel as usual, so there is no need to ask again."
    )


def apology(error_id: str) -> str:
    """The reply to a bug: no details (they are in the log, under `error_id`)."""
    return f"Sorry, something went wrong on our side ({error_id}). It was logged; please try again later."


def fit_message(text: str) -> str:
    """`text` cut to what Discord accepts in one message: a last guard, for text no one shortened."""
    return shorten(text, MAX_MESSAGE_CHARS)


def shorten(text: str, limit: int) -> str:
    """`text` in at most `limit` characters, a cut marked with '…'."""
    return text if len(text) <= limit else text[: max(limit - 1, 0)] + "…"


def fit_line(start: str, middle: str, end: str, room: int, *, least: int = 12) -> str:
    """`start + middle + end` in `room` characters by shortening `middle` (user text such as labels;
    never below `least`), so the mentions and timestamps around it stay whole."""
    return start + shorten(middle, max(room - len(start) - len(end), least)) + end


def listed(items: Sequence[str], room: int, *, more: str = "and {n} more", separator: str = ", ") -> str:
    """As many whole `items` as fit in `room` characters, then `more` with the number left out."""
    shown: list[str] = []
    for index, item in enumerate(items):
        left = len(items) - index - 1
        tail = (separator + more.format(n=left)) if left else ""
        if len(separator.join([*shown, item]) + tail) > room and shown:
            return separator.join([*shown, more.format(n=len(items) - index)])
        shown.append(item)
    return separator.join(shown)


# What sending a message may end in besides an answer: Discord's refusal, or none (a dropped
# connection, a time-out: the message may still show up).
DISCORD_FAILURES = (discord.HTTPException, discord.RateLimited, aiohttp.ClientError, OSError, TimeoutError)


def discord_said(exc: BaseException) -> str:
    """Discord's reason for not taking a message (a `DISCORD_FAILURES`), in a few words for the member."""
    if isinstance(exc, discord.RateLimited):  # longer than the bot waits inside a command
        return f"wait {exc.retry_after:.0f} s before posting here again"
    if isinstance(exc, discord.HTTPException):
        return (exc.text.splitlines() or [f"HTTP {exc.status}"])[0]
    return "no answer"
