"""Votes: one per user per sample, toggled, exact under concurrency; rankings per server."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from storage import JobStore, SampleNotFound, create_engine
from tests.conftest import FakeClock
from tests.storage.helpers import GUILD, USER, finished_job, row_counts


async def test_toggle_adds_then_removes(store: JobStore) -> None:
    _, (sample_id,) = await finished_job(store)
    assert await store.toggle_vote(sample_id, USER) == (True, 1)
    assert await store.has_voted(sample_id, USER)
    assert await store.toggle_vote(sample_id, USER + 1) == (True, 2)
    assert await store.toggle_vote(sample_id, USER) == (False, 1)
    assert not await store.has_voted(sample_id, USER)
    assert await store.vote_count(sample_id) == 1
    assert await store.vote_counts([sample_id, sample_id + 100]) == {sample_id: 1, sample_id + 100: 0}


async def test_vote_for_missing_sample_writes_nothing(store: JobStore) -> None:
    await finished_job(store)
    before = await row_counts(store.engine)
    with pytest.raises(SampleNotFound, match="no sample #4242"):
        await store.toggle_vote(4242, USER)
    assert await row_counts(store.engine) == before


async def test_fifty_users_voting_at_once_get_exact_counts(db_url: str, clock: FakeClock) -> None:
    engines = [create_engine(db_url) for _ in range(4)]
    try:
        stores = [JobStore(engine, clock=clock) for engine in engines]
        _, (sample_id, other_id) = await finished_job(stores[0], samples=2)
        users = [USER + i for i in range(50)]

        async def vote(user: int) -> list[bool]:
            store = stores[user % len(stores)]
            if user % 5 == 0:  # a double click: both toggles in flight together
                results = await asyncio.gather(*(store.toggle_vote(sample_id, user) for _ in range(2)))
                return sorted(voted for voted, _ in results)
            if user % 5 == 1:  # clicks, then changes their mind
                first = await store.toggle_vote(sample_id, user)
                second = await store.toggle_vote(sample_id, user)
                return [first[0], second[0]]
            await store.toggle_vote(other_id, user)  # also votes for the other sample
            return [(await store.toggle_vote(sample_id, user))[0]]

        outcomes = await asyncio.gather(*(vote(user) for user in users))

        for user, outcome in zip(users, outcomes, strict=True):
            if user % 5 == 0:
                assert outcome == [False, True]
            elif user % 5 == 1:
                assert outcome == [True, False]
            else:
                assert outcome == [True]
        voters = {user for user in users if user % 5 >= 2}
        assert await stores[0].vote_counts([sample_id, other_id]) == {sample_id: 30, other_id: 30}
        assert {user for user in users if await stores[1].has_voted(sample_id, user)} == voters
        assert (await row_counts(engines[0]))["votes"] == 60  # no duplicate rows
    finally:
        for engine in engines:
            await engine.dispose()


async def test_top_samples_rank_by_votes_then_recency_per_server(store: JobStore, clock: FakeClock) -> None:
    _, (old_quiet,) = await finished_job(store)
    clock.advance(3600)
    _, (popular, newer_quiet) = await finished_job(store, samples=2)
    _, (other_server,) = await finished_job(store, guild_id=GUILD + 1)
    for user in range(3):
        await store.toggle_vote(popular, user)
        await store.toggle_vote(other_server, user)
    await store.toggle_vote(old_quiet, 7)
    clock.advance(1)
    _, (newest,) = await finished_job(store, params={"artist": "someone"})

    ranked = await store.top_samples(GUILD)
    assert [(r.sample.id, r.votes) for r in ranked] == [
        (popular, 3),
        (old_quiet, 1),
        (newest, 0),
        (newer_quiet, 0),
    ]
    assert ranked[2].params == {"artist": "someone"} and ranked[0].user_id == USER
    assert ranked[0].sample.levels == (2,)

    since = clock.now - timedelta(minutes=30)  # after old_quiet, before the rest
    recent = await store.top_samples(GUILD, since=since, limit=2)
    assert [r.sample.id for r in recent] == [popular, newest]
    assert await store.top_samples(GUILD + 2) == []
