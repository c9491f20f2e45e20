"""Slash-command option types that check what Discord's client would have: a forged payload skips it.

discord.py's `Range` only declares the bounds to Discord; it does not check what arrives. An id
option (`JobId`, `SampleId`) is checked here, so a job or sample number no database can hold gets a
specific reply instead of a failed query.
"""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands

from bot.requests import stored_id


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
