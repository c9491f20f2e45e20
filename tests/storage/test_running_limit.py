"""A user's running-jobs limit holds when workers claim, not only when jobs are queued: with several
workers free, a user's queued jobs wait while their limit of jobs runs, and other users go first."""

from __future__ import annotations

import asyncio

from storage import JobStore
from storage.store import queue_places
from tests.storage.helpers import GUILD, MODEL, USER, enqueue, finished_job, new_sample

OTHER_USER = USER + 1


async def test_a_users_queued_jobs_wait_while_their_limit_of_jobs_runs(store: JobStore) -> None:
    mine = [await enqueue(store, max_running_per_user=1, max_queued_per_user=3) for _ in range(3)]
    theirs = await enqueue(store, user_id=OTHER_USER, max_running_per_user=1)
    elsewhere = await enqueue(store, guild_id=GUILD + 1, max_running_per_user=1)  # another server's limit
    unlimited = await enqueue(store, user_id=USER + 2)  # queued without a limit (an older bot)

    taken = [await store.claim(f"worker-{n}", [MODEL], lease_seconds=60) for n in range(5)]
    assert [job.id if job else None for job in taken] == [mine[0], theirs, elsewhere, unlimited, None]

    await store.complete(mine[0], "worker-0", [new_sample()])
    nxt = await store.claim("worker-0", [MODEL], lease_seconds=60)
    assert nxt is not None and nxt.id == mine[1]  # the user's next, once their job ended


async def test_a_lowered_limit_holds_for_running_jobs_that_go_back_to_the_queue(store: JobStore) -> None:
    """An admin lowers the limit from 3 to 1 while three of a user's jobs run; the workers restart and
    hand them back: one may run again, not three (they kept the old limit)."""
    mine = [await enqueue(store, max_running_per_user=3, max_queued_per_user=3) for _ in range(3)]
    for n in range(3):
        assert await store.claim(f"worker-{n}", [MODEL], lease_seconds=60) is not None
    elsewhere = await enqueue(store, guild_id=GUILD + 1, max_running_per_user=3)

    assert await store.set_running_limit_of_unfinished(GUILD, 1) == 3
    for n, job_id in enumerate(mine):
        await store.release(job_id, f"worker-{n}")
    claimed = [await store.claim(f"worker-{n}", [MODEL], lease_seconds=60) for n in range(3, 6)]
    assert [job.id if job else None for job in claimed] == [mine[0], elsewhere, None]
    assert (await store.get_job(elsewhere)).max_running_per_user == 3  # another server's, unchanged


async def test_a_burst_of_claims_takes_one_job_of_a_user_limited_to_one(store: JobStore) -> None:
    mine = [await enqueue(store, max_running_per_user=1, max_queued_per_user=8) for _ in range(8)]
    claims = await asyncio.gather(*(store.claim(f"worker-{n}", [MODEL], 60) for n in range(8)))
    assert [job.id for job in claims if job is not None] == [mine[0]]


async def test_a_finished_job_does_not_count_as_running(store: JobStore) -> None:
    await finished_job(store)
    queued = await enqueue(store, max_running_per_user=1)
    claimed = await store.claim("worker-a", [MODEL], lease_seconds=60)
    assert claimed is not None and claimed.id == queued


async def test_queue_places_follow_the_claim_rules(store: JobStore) -> None:
    """A job held back by its user's running limit has no place: the jobs behind it go first."""
    mine = [await enqueue(store, max_running_per_user=1, max_queued_per_user=3) for _ in range(3)]
    theirs = await enqueue(store, user_id=OTHER_USER, max_running_per_user=1)
    assert [await store.queue_position(job_id) for job_id in [*mine, theirs]] == [1, None, None, 2]
    places = queue_places(await store.unfinished_jobs())
    assert places.place == {mine[0]: 1, theirs: 2} and places.held == {mine[1], mine[2]}

    claimed = await store.claim("worker-a", [MODEL], lease_seconds=60)
    assert claimed is not None and claimed.id == mine[0]
    assert [await store.queue_position(job_id) for job_id in [*mine[1:], theirs]] == [None, None, 1]
    nxt = await store.claim("worker-b", [MODEL], lease_seconds=60)
    assert nxt is not None and nxt.id == theirs  # as the places said


async def test_queue_places_count_only_the_jobs_a_live_worker_serves(store: JobStore) -> None:
    """A job whose model no live worker serves has no place: the jobs behind it are taken first."""
    other_model = "1b_lyrics" if MODEL != "1b_lyrics" else "5b"
    stranded = await enqueue(store, model=other_model)
    mine = await enqueue(store)
    places = queue_places(await store.unfinished_jobs(), served={MODEL})
    assert places.place == {mine: 1} and places.unserved == {stranded} and not places.held
    everything = queue_places(await store.unfinished_jobs())  # not asked: every model counts
    assert everything.place == {stranded: 1, mine: 2} and not everything.unserved
    # no worker up at all (a restart): the order still, not "waiting for a worker" on every job
    assert queue_places(await store.unfinished_jobs(), served=set()) == everything
    claimed = await store.claim("worker-a", [MODEL], lease_seconds=60)
    assert claimed is not None and claimed.id == mine  # as the places said
