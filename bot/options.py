"""Slash-command option types that check what Discord's client would have: a forged payload skips it.

discord.py's `Range` only declares the bounds to Discord; it does not check what arrives. An id
option (`JobId`, `SampleId`) is checked here, so a job or sample number no database can hold gets a
specific reply instead of a failed query.
"""

from __future__ import annotations

import math
from typing import Any

import discord
from discord import app_commands

from bot.requests import stored_id
from sampler.user_text import quote_user_text, shorten_user_text


class StoredIdTransformer(app_commands.Transformer):
    """A positive integer option that must fit the store's ids (`bot.requests.stored_id`)."""

    def __init__(self, what: str) -> None:
        self.what = what

    @property
    def type(self) -> discord.AppCommandOptionType:
        return discord.AppCommandOptionType.integer

    @property
    def min_value(self) -> int:
        return 1

    async def transform(self, interaction: discord.Interaction[Any], value: Any, /) -> int:
        return stored_id(value, self.what)


JobId = app_commands.Transform[int, StoredIdTransformer("job")]
SampleId = app_commands.Transform[int, StoredIdTransformer("sample")]


def forged_option(interaction: discord.Interaction[Any]) -> str | None:
    """Why an option of the slash command `interaction` runs lies outside what the command declared
    to Discord (bounds, lengths, choices), or None. Discord's client keeps to them; a forged payload
    need not, and a value no code below expects (a limit of 10**9 s, 2**70 queued jobs) must not
    reach it."""
    command = interaction.command
    if interaction.type is not discord.InteractionType.application_command or not isinstance(
        command, app_commands.Command
    ):
        return None
    namespace = interaction.namespace
    for parameter in command.parameters:
        name = parameter.display_name
        if name not in namespace or namespace[name] is None:
            continue
        problem = _option_problem(parameter, namespace[name])
        if problem is not None:
            return f"The option `{name}` {problem}."
    return None


def _option_problem(parameter: app_commands.Parameter, value: Any) -> str | None:
    choices = [choice.value for choice in parameter.choices]
    if choices and value not in choices:
        return f"is one of {', '.join(map(str, choices))}, not {quote_user_text(str(value))}"
    low = -math.inf if parameter.min_value is None else parameter.min_value
    high = math.inf if parameter.max_value is None else parameter.max_value
    if parameter.type is discord.AppCommandOptionType.string:  # the bounds are lengths
        if not isinstance(value, str):
            return "must be text"
        if not low <= len(value) <= high:
            return f"takes {_bounds(max(low, 0), high)} characters, got {len(value):,}"
    elif parameter.type in (discord.AppCommandOptionType.integer, discord.AppCommandOptionType.number):
        whole = parameter.type is discord.AppCommandOptionType.integer
        if isinstance(value, bool) or not isinstance(value, int if whole else int | float):
            return "must be a whole number" if whole else "must be a number"
        if not (math.isfinite(value) and low <= value <= high):
            shown = str(value) if isinstance(value, int) else f"{value:g}"  # as sent
            return f"must be {_bounds(low, high)}, got {shorten_user_text(shown)}"
    return None


def _bounds(low: float, high: float) -> str:
    if math.isinf(high):
        return f"at least {_number(low)}"
    if math.isinf(low):
        return f"at most {_number(high)}"
    return f"between {_number(low)} and {_number(high)}"


def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"
