"""Errors the bot shows to the person who typed the command: one class per kind of refusal.

`str(error)` is the whole reply, a sentence or two saying what was wrong and what to do
instead. The central app-command error handler (`bot.bot.JukeTree.on_error`) sends it
ephemerally; anything that is not a `JukebotError` gets a short apology with an error id.
"""

from __future__ import annotations


class JukebotError(Exception):
    """Base class: a refusal whose message is fit to show the user as it is."""


class InvalidRequest(JukebotError):
    """An option value that cannot be used (out of range, contradicting another option, …)."""


class LimitReached(JukebotError):
    """A per-user, per-job or per-server limit refused the request; says which and until when."""


class ChannelNotAllowed(JukebotError):
    """The server restricted the bot to some channels and this is not one of them."""


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


class JobNotInServer(JukebotError):
    def __init__(self, job_id: int) -> None:
        super().__init__(f"Job #{job_id} belongs to another server; see /queue for your jobs here.")
        self.job_id = job_id


class NotInServer(JukebotError):
    """A command that only makes sense inside a server was used in a direct message."""

    def __init__(self) -> None:
        super().__init__("This command works only in a server channel, not in direct messages.")
