"""`jukebot jobs retry` through the command line: a retried job gets the running-jobs limit in force now
(its server's own, else JUKEBOT_MAX_RUNNING_JOBS_PER_USER), and a job of a server the bot was removed
from is refused by name."""

from __future__ import annotations

import pytest

from storage import JobStatus, JobStore
from storage.records import GuildSettings
from tests.jukebot.test_jobs_cli import database, failed_job, jobs, with_store
from tests.storage.helpers import GUILD, enqueue

__all__ = ["database"]
REASON = "CUDA out of memory"


def test_retry_gives_the_running_limit_in_force_now(database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both jobs were queued under a limit of 5; since then the operator set the bot-wide limit to 2
    and the admin of the other server set theirs to 1."""

    async def make(store: JobStore) -> tuple[int, int]:
        here = await failed_job(store, None, REASON, max_running_per_user=5)
        there = await failed_job(store, None, REASON, guild_id=GUILD + 1, max_running_per_user=5)
        await store.set_guild_settings(GuildSettings(guild_id=GUILD + 1, max_running_jobs_per_user=1))
        return here, there

    here, there = with_store(database, make)
    monkeypatch.setenv("JUKEBOT_MAX_RUNNING_JOBS_PER_USER", "2")

    result = jobs("retry", str(here), str(there))

    assert result.exit_code == 0, result.output

    async def read(store: JobStore) -> list[tuple[JobStatus, int | None]]:
        return [((job := await store.get_job(i)).status, job.max_running_per_user) for i in (here, there)]

    assert with_store(database, read) == [(JobStatus.QUEUED, 2), (JobStatus.QUEUED, 1)]


def test_retry_refuses_a_job_of_a_server_the_bot_was_removed_from(database: str) -> None:
    async def make(store: JobStore) -> tuple[int, int]:
        left = await enqueue(store)
        await store.cancel_guild_jobs(GUILD)  # the bot's `on_guild_remove`
        failed = await failed_job(store, None, REASON, guild_id=GUILD + 1)
        return left, failed

    left, failed = with_store(database, make)

    result = jobs("retry", str(left), str(failed))

    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"Job #{failed} is queued again; it starts over (it has no checkpoint)."
    ]
    assert result.stderr.splitlines() == [
        f"Job #{left} was not retried: the bot was removed from its server ({GUILD}) and is not in it "
        "again: its results could not be posted there.",
        "Error: 1 of 2 jobs was not retried (see above).",
    ]
    status = with_store(database, lambda store: store.get_job(left)).status
    assert status is JobStatus.CANCELLED
