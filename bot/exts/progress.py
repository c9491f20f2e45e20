"""Progress messages and results: owns the `ProgressRelay` and its background task, and recovers the
jobs of workers that died (workers do this too, but a bot whose workers are all gone must not show
their jobs running, or their users' cancels stopping, for ever).

Other features never call the relay: they announce through the bot's event dispatch
(`bot.dispatch("job_queued", job, reply_to)`, `bot.dispatch("job_cancel_requested", job_id)`),
and the listeners here act on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from discord.ext import commands

from bot.bot import JukeBot
from bot.relay import ProgressRelay
from storage.records import Job

log = logging.getLogger(__name__)


class Progress(commands.Cog):
    def __init__(self, bot: JukeBot) -> None:
        self.bot = bot
        self.relay = ProgressRelay(
            bot,
            poll_interval_s=bot.settings.progress_poll_seconds,
            min_edit_interval_s=bot.settings.progress_min_edit_seconds,
        )
        self._tasks: list[asyncio.Task[None]] = []

    async def cog_load(self) -> None:
        self._tasks = [
            self.bot.tasks.create(self.relay.run(), name="progress-relay"),
            self.bot.tasks.create(self._recover_expired(), name="recover-expired-leases"),
        ]

    async def cog_unload(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        await self.relay.stop()

    async def _recover_expired(self) -> None:
        """Every `worker_requeue_seconds`, as workers do: a job whose worker stopped heartbeating goes
        back to the queue (or fails, out of attempts; a cancel in progress ends as cancelled), a
        lease after this or another pass first saw its lease run out (the store's rule: a worker cut
        off from the database renews it once it sees the database back)."""
        while True:
            await asyncio.sleep(self.bot.settings.worker_requeue_seconds)  # a period, not a wait for state
            try:
                changed = await self.bot.store.requeue_expired()
            except Exception as exc:  # e.g. the database is away: the next round tries again
                log.warning("could not recover the jobs of dead workers: %r", exc)
                continue
            if changed:
                log.info("recovered the jobs of dead workers: %s", changed)
                self.relay.poke()

    @commands.Cog.listener()
    async def on_job_queued(self, job: Job, reply_to: int | None) -> None:
        """Post the new job's progress message now rather than at the next poll."""
        await self.relay.announce(job.id, reply_to=reply_to)

    @commands.Cog.listener()
    async def on_job_cancel_requested(self, job_id: int) -> None:
        self.relay.poke()


async def setup(bot: JukeBot) -> None:
    await bot.add_cog(Progress(bot))
