"""Progress messages and results: owns the `ProgressRelay` and its background task.

Other features never call the relay: they announce through the bot's event dispatch
(`bot.dispatch("job_queued", job, reply_to)`, `bot.dispatch("job_cancel_requested", job_id)`),
and the listeners here act on it.
"""

from __future__ import annotations

import asyncio
import contextlib

from discord.ext import commands

from bot.bot import JukeBot
from bot.relay import ProgressRelay
from storage.records import Job


class Progress(commands.Cog):
    def __init__(self, bot: JukeBot) -> None:
        self.bot = bot
        self.relay = ProgressRelay(
            bot,
            poll_interval_s=bot.settings.progress_poll_seconds,
            min_edit_interval_s=bot.settings.progress_min_edit_seconds,
        )
        self._task: asyncio.Task[None] | None = None

    async def cog_load(self) -> None:
        self._task = self.bot.tasks.create(self.relay.run(), name="progress-relay")

    async def cog_unload(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    @commands.Cog.listener()
    async def on_job_queued(self, job: Job, reply_to: int | None) -> None:
        """Post the new job's progress message now rather than at the next poll."""
        await self.relay.announce(job.id, reply_to=reply_to)

    @commands.Cog.listener()
    async def on_job_cancel_requested(self, job_id: int) -> None:
        self.relay.poke()


async def setup(bot: JukeBot) -> None:
    await bot.add_cog(Progress(bot))
