"""`retry_job` gives the job the running-jobs limit in force now, as a job queued now gets: its server's
own (guild_settings), else the bot-wide setting; not the one it was queued with (jobs.max_running_per_user,
which a claim respects)."""

from __future__ import annotations

from storage import JobStatus, JobStore
from storage.records import GuildSettings
from tests.storage.helpers import GUILD, MODEL, USER, enqueue

WORKER = "worker-a"
OTHER_USER = USER + 1


async def failed_job(store: JobStore, **fields: object) -> int:
    job_id = await enqueue(store, **fields)
    claimed = await store.claim(WORKER, [MODEL], lease_seconds=60)
    assert claimed is not None and claimed.id == job_id
    await store.fail(job_id, WORKER, "CUDA out of memory")
    return job_id


async def set_server_limit(store: JobStore, limit: int | None) -> None:
    """What `/jukebot-admin limits max_running:` (or `reset:true`) stores."""
    await store.set_guild_settings(GuildSettings(guild_id=GUILD, max_running_jobs_per_user=limit))


async def limit_of(store: JobStore, job_id: int) -> int | None:
    return (await store.get_job(job_id)).max_running_per_user


async def test_a_retried_job_follows_the_server_limit_an_admin_set_after_it_failed(store: JobStore) -> None:
    job_id = await failed_job(store, max_running_per_user=3, max_queued_per_user=3)
    await set_server_limit(store, 1)  # the admin lowers the limit while the job lies failed
    assert await store.set_running_limit_of_unfinished(GUILD, 1) == 0  # a failed job is not unfinished

    retried = await store.retry_job(job_id)  # no bot-wide limit given: the server's own still holds

    assert retried.max_running_per_user == 1
    assert await limit_of(store, job_id) == 1


async def test_the_new_server_limit_holds_when_workers_claim_the_retried_job(store: JobStore) -> None:
    """The user has a job running and the admin lowered their limit to 1: the retried job waits, other
    users' jobs go first."""
    job_id = await failed_job(store, max_running_per_user=2, max_queued_per_user=3)
    running = await enqueue(store, max_running_per_user=2, max_queued_per_user=3)
    claimed = await store.claim(WORKER, [MODEL], lease_seconds=60)
    assert claimed is not None and claimed.id == running
    await set_server_limit(store, 1)
    await store.set_running_limit_of_unfinished(GUILD, 1)
    theirs = await enqueue(store, user_id=OTHER_USER, max_running_per_user=1)

    await store.retry_job(job_id, bot_wide_running_limit=2)

    taken = [await store.claim(f"worker-{n}", [MODEL], lease_seconds=60) for n in range(2)]
    assert [job.id if job else None for job in taken] == [theirs, None]
    assert (await store.get_job(job_id)).status is JobStatus.QUEUED


async def test_without_a_server_limit_the_retried_job_follows_the_bot_wide_one(store: JobStore) -> None:
    """Queued under the bot-wide limit of 1, or an admin's 4 since reset: the bot-wide limit is 2 now."""
    under_default = await failed_job(store, max_running_per_user=1)
    under_reset = await failed_job(store, max_running_per_user=4)
    await set_server_limit(store, None)

    assert (await store.retry_job(under_default, bot_wide_running_limit=2)).max_running_per_user == 2
    assert (await store.retry_job(under_reset, bot_wide_running_limit=2)).max_running_per_user == 2


async def test_a_tighter_server_limit_goes_before_the_bot_wide_one(store: JobStore) -> None:
    job_id = await failed_job(store, max_running_per_user=3)
    await set_server_limit(store, 1)
    assert (await store.retry_job(job_id, bot_wide_running_limit=2)).max_running_per_user == 1


async def test_a_looser_server_limit_is_held_to_the_bot_wide_one(store: JobStore) -> None:
    """The operator's setting is the ceiling: every server shares the GPUs."""
    job_id = await failed_job(store, max_running_per_user=1)
    await set_server_limit(store, 5)
    assert (await store.retry_job(job_id, bot_wide_running_limit=2)).max_running_per_user == 2


async def test_another_servers_limit_is_not_this_jobs(store: JobStore) -> None:
    job_id = await failed_job(store, guild_id=GUILD + 1, max_running_per_user=3)
    await set_server_limit(store, 1)  # GUILD's, not the job's server's
    assert (await store.retry_job(job_id, bot_wide_running_limit=2)).max_running_per_user == 2


async def test_without_any_limit_given_the_one_it_was_queued_with_stands_in(store: JobStore) -> None:
    """No server limit and no bot-wide one given: the job keeps its limit (none, if an older bot queued
    it without one)."""
    limited = await failed_job(store, max_running_per_user=3)
    unlimited = await failed_job(store)
    assert (await store.retry_job(limited)).max_running_per_user == 3
    assert (await store.retry_job(unlimited)).max_running_per_user is None
