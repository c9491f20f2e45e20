"""Curated pieces: a `curate` job stored already succeeded with its one sample, never queued."""

from __future__ import annotations

from typing import Any

import pytest

from storage import JobKind, JobStatus, JobStore
from storage.errors import InvalidJob, InvalidSample
from tests.storage.helpers import CHANNEL, GUILD, MODEL, USER, enqueue, finished_job, new_sample, row_counts

CURATION_PARAMS: dict[str, Any] = {
    "artist": "the beatles",
    "curation": {"sample_ids": [2, 1], "join_scores": [0.75], "similarity": "codes"},
}


async def store_piece(store: JobStore, **fields: Any) -> tuple[int, int]:
    values: dict[str, Any] = {
        "guild_id": GUILD,
        "channel_id": CHANNEL,
        "user_id": USER,
        "model": MODEL,
        "params": CURATION_PARAMS,
        "sample": new_sample(0, seed=0, duration_seconds=33.5),
    }
    return await store.store_curation(**(values | fields))


async def test_a_curation_is_a_succeeded_posted_job_with_one_votable_sample(store: JobStore) -> None:
    ingredients_job, ingredients = await finished_job(store, samples=2)
    job_id, sample_id = await store_piece(store)

    job = await store.get_job(job_id)
    assert (job.kind, job.status, job.progress) == (JobKind.CURATE, JobStatus.SUCCEEDED, 1.0)
    assert job.params == CURATION_PARAMS
    assert job.results_posted_at is not None  # the bot posts it itself: the relay must not
    # (only the ingredients' job, which has no progress message here, waits for the relay)
    assert [unposted.id for unposted in await store.finished_jobs_unposted(GUILD)] == [ingredients_job]
    assert await store.claim("w", [MODEL], lease_seconds=60) is None  # nothing for a worker
    (info,) = await store.samples_for_job(job_id)
    assert (info.id, info.index, info.levels, info.duration_seconds) == (sample_id, 0, (2,), 33.5)
    assert await store.toggle_vote(sample_id, USER) == (True, 1)
    ranked = await store.top_samples(GUILD)
    assert [entry.sample.id for entry in ranked] == [sample_id, *sorted(ingredients, reverse=True)]


async def test_a_curation_with_a_bad_sample_or_params_stores_nothing(store: JobStore) -> None:
    await finished_job(store)
    before = await row_counts(store.engine)
    with pytest.raises(InvalidSample, match="audio is empty"):
        await store_piece(store, sample=new_sample(0, audio=b""))
    with pytest.raises(InvalidJob, match="plain JSON"):
        await store_piece(store, params={"score": float("nan")})
    with pytest.raises(InvalidJob, match="Discord id"):
        await store_piece(store, user_id=-1)
    assert await row_counts(store.engine) == before


async def test_curate_jobs_are_not_queued(store: JobStore) -> None:
    before = await row_counts(store.engine)
    with pytest.raises(InvalidJob, match="not queued"):
        await enqueue(store, kind=JobKind.CURATE)
    assert await row_counts(store.engine) == before


async def test_user_samples_and_sample_origins(store: JobStore) -> None:
    _, mine = await finished_job(store, samples=2)
    _, others = await finished_job(store, samples=1, user_id=USER + 1)
    _, elsewhere = await finished_job(store, samples=1, guild_id=GUILD + 1)
    assert [info.id for info in await store.user_samples(GUILD, USER)] == mine
    assert [info.id for info in await store.user_samples(GUILD, USER, limit=1)] == mine[:1]
    assert [info.id for info in await store.user_samples(GUILD, USER + 1)] == others
    assert await store.user_samples(GUILD + 2, USER) == []
    origins = await store.sample_origins([*mine, *elsewhere, 9999])
    assert {sample_id: origin.guild_id for sample_id, origin in origins.items()} == {
        mine[0]: GUILD,
        mine[1]: GUILD,
        elsewhere[0]: GUILD + 1,
    }


async def test_a_piece_its_bot_posts_is_claimed_until_posted_or_given_back(store: JobStore) -> None:
    """With `poster_id`, the bot that made the piece holds the claim on posting it: nobody else may
    post it meanwhile, and once it gives the claim back (stopping) the relay may."""
    job_id, _ = await store_piece(store, poster_id="curate:this-bot", posting_lease_s=600.0)
    assert (await store.get_job(job_id)).results_posted_at is None
    assert await store.claim_results_posting(job_id, "bot:another", 30.0) is None  # held
    await store.release_results_posting(job_id, "curate:this-bot", history_unread=True)
    claim = await store.claim_results_posting(job_id, "bot:another", 30.0)
    assert claim is not None and claim.taken_over_from is not None  # to read the channel first

    posted, _ = await store_piece(store, poster_id="curate:this-bot")
    assert await store.finish_results_posting(posted, "curate:this-bot")
    assert (await store.get_job(posted)).results_posted_at is not None
    assert await store.claim_results_posting(posted, "bot:another", 30.0) is None


async def test_a_servers_curated_pieces_are_listed_newest_first_with_their_records(store: JobStore) -> None:
    await finished_job(store, samples=2)  # a job's samples: no piece
    first_job, first = await store_piece(store)
    _, elsewhere = await store_piece(store, guild_id=GUILD + 1)
    second_job, second = await store_piece(store, channel_id=CHANNEL + 1, user_id=USER + 1, params={"x": 1})

    pieces = await store.curated_pieces(GUILD)
    assert [(piece.sample_id, piece.origin.job_id) for piece in pieces] == [
        (second, second_job),
        (first, first_job),
    ]
    assert (pieces[0].origin.channel_id, pieces[0].origin.user_id, pieces[0].params) == (
        CHANNEL + 1,
        USER + 1,
        {"x": 1},
    )
    assert pieces[1].params == CURATION_PARAMS
    assert [piece.sample_id for piece in await store.curated_pieces(GUILD + 1)] == [elsewhere]
    assert await store.curated_pieces(GUILD + 2) == []
