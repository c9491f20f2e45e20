"""Reading several jobs' samples, or several samples' origins, in one query (/history, /curate)."""

from __future__ import annotations

import pytest

from storage.errors import SampleNotFound
from storage.records import SampleOrigin
from storage.store import JobStore
from tests.storage.helpers import CHANNEL, GUILD, MODEL, USER, enqueue, finished_job, new_sample


async def test_samples_of_jobs_in_index_order_with_an_entry_for_every_job_asked(store: JobStore) -> None:
    first, first_samples = await finished_job(store, samples=3)
    second, second_samples = await finished_job(store, samples=1)
    waiting = await enqueue(store)  # no samples yet

    found = await store.samples_of_jobs([second, first, waiting, 9999, first])
    assert {job_id: [info.id for info in infos] for job_id, infos in found.items()} == {
        first: first_samples,
        second: second_samples,
        waiting: [],
        9999: [],
    }
    assert [info.index for info in found[first]] == [0, 1, 2]
    assert all(info.job_id == first for info in found[first])
    assert await store.samples_of_jobs([]) == {}


async def test_sample_origins_say_where_and_by_whom_and_leave_unknown_ids_out(store: JobStore) -> None:
    here, (mine,) = await finished_job(store)
    there, (theirs,) = await finished_job(store, guild_id=GUILD + 1, channel_id=CHANNEL + 1, user_id=USER + 1)

    assert await store.sample_origins([theirs, mine, 9999]) == {
        mine: SampleOrigin(job_id=here, guild_id=GUILD, channel_id=CHANNEL, user_id=USER),
        theirs: SampleOrigin(job_id=there, guild_id=GUILD + 1, channel_id=CHANNEL + 1, user_id=USER + 1),
    }
    assert await store.sample_origins([]) == {}


async def test_codes_count_counts_a_levels_codes_without_reading_them(store: JobStore) -> None:
    job_id = await enqueue(store)
    assert (await store.claim("worker", [MODEL], lease_seconds=60)) is not None
    (sample_id,) = await store.complete(job_id, "worker", [new_sample(codes_level_1=bytes(2 * 123))])
    # the top level's 50 codes (the helper's), the middle level's 123, none at the bottom
    assert [await store.codes_count(sample_id, level) for level in (0, 1, 2)] == [None, 123, 50]
    with pytest.raises(SampleNotFound):
        await store.codes_count(9999, 2)
