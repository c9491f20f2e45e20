"""A bot whose workers all died (the GPU machine is gone, no worker runs beside the bot) still
recovers their jobs when the leases run out: nothing shows "running" for ever, and a cancel ends."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from sqlalchemy import select

from storage.models import JobStatus, utcnow
from storage.records import ClaimedJob
from storage.store import JobStore, jobs
from tests.bot.conftest import BotRunner
from tests.bot.fake_discord import FakeDiscord
from tests.bot.harness import (
    PlayedWorker,
    make_bot,
    make_settings,
    progress_message,
    queue_song,
    reply_of,
    when,
)
from tests.conftest import FakeClock
from tests.waiting import wait_until

LEASE_S = 600  # PlayedWorker's
T = TypeVar("T")


async def lapse_seen(store: JobStore, *job_ids: int) -> bool:
    """Whether a recovery pass saw these jobs' leases run out (they are recovered a lease later)."""
    async with store.engine.connect() as connection:
        seen = await connection.execute(
            select(jobs.c.id).where(jobs.c.id.in_(job_ids), jobs.c.lease_lapse_ends_at.is_not(None))
        )
        return len(seen.all()) == len(job_ids)


async def test_the_bot_recovers_the_jobs_of_a_worker_that_died(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    fake = fake_discord
    clock = FakeClock(utcnow())
    store = JobStore(sqlite_store.engine, clock=clock)
    await bot_runner.start(make_bot(fake, store, make_settings(worker_requeue_seconds=0.05)))
    bob = fake.user("bob")
    await queue_song(fake, "alice")
    await queue_song(fake, "bob")
    worker = PlayedWorker(store)  # it claims both jobs, then its machine goes away
    first, second = await worker.claim(), await worker.claim()
    cancel = await reply_of(fake, await fake.invoke_command("cancel", {"job": second.id}, user=bob))
    assert cancel.startswith(f"Job #{second.id} is stopping")
    refused = await reply_of(fake, await fake.invoke_command("jukebox", {}, user=bob))
    assert refused.startswith("You have 1 job running"), refused  # the cancelling one

    clock.advance(LEASE_S + 1)  # no heartbeat: the leases run out
    await PlayedWorker(store, worker_id="another-worker").start()  # one that lives, for the queue place
    await wait_until(
        lambda: lapse_seen(store, first.id, second.id), 10.0, "the bot to see the leases run out"
    )
    assert (await store.get_job(first.id)).status is JobStatus.RUNNING  # its worker may be cut off
    clock.advance(LEASE_S + 1)  # …for a lease more: it is dead

    async def recovered() -> bool:
        statuses = ((await store.get_job(first.id)).status, (await store.get_job(second.id)).status)
        return statuses == (JobStatus.QUEUED, JobStatus.CANCELLED)

    await wait_until(recovered, 10.0, "the bot to recover the dead worker's jobs")
    shown = await fake.wait_for(
        when(
            lambda: progress_message(fake, first.id).content.endswith(
                "Queued: position 1 in the queue (attempt 2)."
            )
        ),
    )
    assert shown
    assert (await store.get_job(first.id)).attempts == 1
    again = await reply_of(fake, await fake.invoke_command("jukebox", {}, user=bob))
    assert again.startswith("Queued as job #3."), again
    requeued = await fake.invoke_command("cancel", {"job": first.id}, user=fake.user("alice"))
    assert (
        await reply_of(fake, requeued) == f"Job #{first.id} is cancelled; it was waiting to be tried again."
    )


async def test_the_bot_names_the_jobs_of_servers_it_was_removed_from_while_offline(
    fake_discord: FakeDiscord,
    bot_runner: BotRunner,
    sqlite_store: JobStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No `on_guild_remove` fires for a server that removed the bot while it was offline: at start
    it tells the operator which jobs can never be posted, and how to cancel them."""
    fake, store = fake_discord, sqlite_store
    params = {"artist": "the beatles", "genre": "rock", "lyrics": "", "seconds": 20}
    gone = await store.enqueue(
        kind="generate", model="5b_lyrics", params=params, guild_id=4242, channel_id=4343, user_id=1
    )
    here = await store.enqueue(
        kind="generate",
        model="5b_lyrics",
        params=params,
        guild_id=fake.default_guild.id,
        channel_id=fake.channel("general").id,
        user_id=fake.user("alice").id,
    )
    with caplog.at_level(logging.WARNING, logger="bot.exts.jobs"):
        await bot_runner.start(make_bot(fake, store))

        async def warned() -> str | None:
            return next((r.getMessage() for r in caplog.records if r.name == "bot.exts.jobs"), None)

        message = await wait_until(warned, 10.0, "the warning about jobs of servers the bot left")
    assert (
        message.startswith(f"jobs #{gone} belong to servers this bot is not in") and f"#{here}" not in message
    )
    assert message.endswith(f"`jukebot jobs cancel {gone}`")
    assert (await store.get_job(gone)).status is JobStatus.QUEUED  # told, not cancelled


class RecoveryCallsThatFail(JobStore):
    """The store the bot's lease recovery uses, unreachable while `away` (a connection refused, as from
    a database that is down), recording the calls answered."""

    away = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failed: list[str] = []
        self.answered: list[str] = []

    async def _as_the_database_is(self, name: str, call: Awaitable[T]) -> T:
        if self.away:
            call.close()  # type: ignore[attr-defined]
            self.failed.append(name)
            raise ConnectionRefusedError(111, "Connection refused")
        result = await call
        self.answered.append(name)
        return result

    async def requeue_expired(self, *args: Any, **kwargs: Any) -> list[tuple[int, JobStatus]]:
        return await self._as_the_database_is("requeue_expired", super().requeue_expired(*args, **kwargs))

    async def served_models(self) -> frozenset[str]:
        return await self._as_the_database_is("served_models", super().served_models())


async def a_job_running_beside_a_bot(
    fake: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> tuple[RecoveryCallsThatFail, FakeClock, PlayedWorker, ClaimedJob]:
    """A bot recovering leases every 0.05 s, and a job its worker runs (leases by the returned clock)."""
    clock = FakeClock(utcnow())
    store = RecoveryCallsThatFail(sqlite_store.engine, clock=clock)
    settings = make_settings(worker_requeue_seconds=0.05, worker_lease_seconds=5.0)
    await bot_runner.start(make_bot(fake, store, settings))
    await queue_song(fake, "alice")
    worker = PlayedWorker(store)
    return store, clock, worker, await worker.claim()


async def test_after_an_outage_the_bot_leaves_lapsed_leases_to_their_workers_for_a_lease(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """A database away for longer than a lease: the worker, which sampled on meanwhile, renews its
    lease when it sees the database back. The bot's recovery, which runs beside it, must not put
    the job back in the queue first (that lost every window sampled during the outage, and an
    attempt); a worker that really died is still recovered, a lease later."""
    store, clock, worker, job = await a_job_running_beside_a_bot(fake_discord, bot_runner, sqlite_store)

    store.away = True

    async def a_recovery_failed() -> bool:
        return "requeue_expired" in store.failed

    await wait_until(a_recovery_failed, 10.0, "the bot's recovery to meet the outage")
    clock.advance(LEASE_S + 1)  # the lease runs out while the database is away
    answered_before = len(store.answered)
    store.away = False

    async def the_bot_saw_it_back() -> bool:
        return len(store.answered) > answered_before

    await wait_until(the_bot_saw_it_back, 10.0, "the bot to find the database back")
    await wait_until(lambda: lapse_seen(store, job.id), 10.0, "the bot to see the lease run out")
    await store.heartbeat(job.id, worker.worker_id, LEASE_S)  # the worker renews its lease: still its own
    assert (await store.get_job(job.id)).status is JobStatus.RUNNING

    clock.advance(LEASE_S + 1)  # now it really died
    await wait_until(lambda: lapse_seen(store, job.id), 10.0, "the bot to see the lease run out again")
    clock.advance(LEASE_S + 1)

    async def recovered() -> bool:
        return (await store.get_job(job.id)).status is JobStatus.QUEUED

    await wait_until(recovered, 30.0, "the bot to recover the job of a worker that died")


async def test_a_lease_that_ran_out_in_an_outage_the_bot_never_saw_is_left_to_its_worker(
    fake_discord: FakeDiscord, bot_runner: BotRunner, sqlite_store: JobStore
) -> None:
    """The database was away between two of the bot's recovery passes (or only on the worker's path):
    the bot saw no outage, yet the lease ran out meanwhile. Its next pass must leave the job to its
    worker, which renews the lease when it sees the database back; it put the job back in the queue,
    losing every window sampled during the outage, and an attempt."""
    store, clock, worker, job = await a_job_running_beside_a_bot(fake_discord, bot_runner, sqlite_store)

    def two_passes_since(passes: int) -> Callable[[], Awaitable[bool]]:
        async def done() -> bool:  # the second surely began after: the first may have read the clock before
            return store.answered[passes:].count("requeue_expired") >= 2

        return done

    clock.advance(LEASE_S + 1)  # the worker's heartbeats did not get through
    await wait_until(two_passes_since(len(store.answered)), 10.0, "recovery passes after the lease ran out")
    assert (await store.get_job(job.id)).status is JobStatus.RUNNING
    await store.heartbeat(job.id, worker.worker_id, LEASE_S)  # the worker sees the database back
    await wait_until(two_passes_since(len(store.answered)), 10.0, "recovery passes after the renewal")
    after = await store.get_job(job.id)
    assert (after.status, after.lease_owner, after.attempts) == (JobStatus.RUNNING, worker.worker_id, 0)
