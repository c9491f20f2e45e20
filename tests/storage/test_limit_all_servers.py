"""A member of many servers could queue up to each server's limit in every one of them: with the
default limits (one running, three queued), ten servers gave one member 40 jobs on the operator's
GPUs. `JUKEBOT_MAX_JOBS_PER_USER_ALL_SERVERS` caps a user's unfinished jobs in all servers together,
counted in the insert's transaction as the per-server limits are, so a burst cannot get past it."""

from __future__ import annotations

import asyncio

import pytest

from storage import JobStore
from storage.errors import InvalidJob, UserJobLimitReached
from tests.storage.helpers import GUILD, MODEL, USER, enqueue, new_sample

LIMIT = {"max_unfinished_per_user_all_servers": 3}


async def test_a_users_unfinished_jobs_in_all_servers_together_are_capped(store: JobStore) -> None:
    first = await enqueue(store, guild_id=GUILD, **LIMIT)
    second = await enqueue(store, guild_id=GUILD + 1, **LIMIT)
    third = await enqueue(store, guild_id=GUILD + 2, max_queued_per_user=3, **LIMIT)
    assert await enqueue(store, guild_id=GUILD + 3, user_id=USER + 1, **LIMIT)  # another user's own count
    claimed = await store.claim("worker-a", [MODEL], lease_seconds=60)
    assert claimed is not None and claimed.id == first  # a running job counts too

    with pytest.raises(UserJobLimitReached) as refused:
        await enqueue(store, guild_id=GUILD + 4, **LIMIT)
    assert refused.value.all_servers and refused.value.limit == 3
    assert refused.value.job_ids == (first, second, third)
    assert len(await store.unfinished_jobs(GUILD + 4)) == 0  # nothing was written

    await store.complete(first, "worker-a", [new_sample()])  # a finished job frees a place
    assert await enqueue(store, guild_id=GUILD + 4, **LIMIT)
    assert await enqueue(store, guild_id=GUILD + 5)  # without the limit (the setting off): not counted


async def test_a_burst_in_many_servers_at_once_stops_at_the_limit(store: JobStore) -> None:
    results = await asyncio.gather(
        *(enqueue(store, guild_id=GUILD + n, **LIMIT) for n in range(8)), return_exceptions=True
    )
    queued = [result for result in results if isinstance(result, int)]
    refused = [result for result in results if isinstance(result, UserJobLimitReached)]
    assert len(queued) == 3 and len(refused) == 5, results
    assert all(error.all_servers for error in refused)


@pytest.mark.parametrize("limit", [0, -1, True, 1.5])
async def test_a_limit_that_is_not_a_positive_count_is_refused(store: JobStore, limit: object) -> None:
    with pytest.raises(InvalidJob):
        await enqueue(store, max_unfinished_per_user_all_servers=limit)
