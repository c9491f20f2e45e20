"""Queries the bot runs often stay index lookups in a store with many finished jobs and votes.

The statement the store runs is captured as sent (`before_cursor_execute`) and explained with its own
parameters: `EXPLAIN QUERY PLAN` on SQLite, `EXPLAIN` on Postgres after seeding thousands of rows and
`ANALYZE` (the planner left to choose: nothing is switched off). No timings are asserted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Any

from sqlalchemy import event, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from storage import JobStore
from storage.models import JobRow, SampleRow, VoteRow
from storage.store import _upsample_covering
from tests.conftest import FakeClock
from tests.storage.helpers import GUILD, USER, enqueue, finished_job

GUILDS = [GUILD + g for g in range(20)]  # GUILD first
SEEDED_JOBS = 4000  # spread over GUILDS, every one finished and posted
UNPOSTED_INDEX = "ix_jobs_guild_unposted"
VOTES_INDEX = "uq_votes_sample_id_user_id"


async def seed(store: JobStore, clock: FakeClock) -> None:
    """Many finished, posted jobs over 20 servers, a sample each, two votes on every third sample; a
    few finished jobs of GUILD not posted yet. Planner statistics are refreshed (Postgres)."""
    start = clock.now - timedelta(days=90)
    statuses = ["succeeded"] * 7 + ["failed"] * 2 + ["cancelled"]
    rows = []
    for i in range(SEEDED_JOBS):
        created = start + timedelta(minutes=i)
        finished = created + timedelta(minutes=10)
        rows.append(
            {
                "guild_id": GUILDS[i % len(GUILDS)],
                "channel_id": 1,
                "user_id": USER + i % 50,
                "kind": "generate",
                "model": "5b_lyrics",
                "params": {"artist": "queen"},
                "status": statuses[i % len(statuses)],
                "priority": 0,
                "attempts": 0,
                "max_attempts": 3,
                "progress": 1.0,
                "created_at": created,
                "started_at": created,
                "finished_at": finished,
                "updated_at": finished,
                # the last few of GUILD still wait for the bot
                "results_posted_at": None if i >= SEEDED_JOBS - 100 and i % len(GUILDS) == 0 else finished,
            }
        )
    async with store.engine.begin() as connection:
        await connection.execute(insert(JobRow), rows)
        succeeded = [
            (job_id, created)
            for job_id, created in await connection.execute(
                select(JobRow.id, JobRow.created_at).where(JobRow.status == "succeeded")
            )
        ]
        sample_rows = [
            {
                "job_id": job_id,
                "index": 0,
                "model": "5b_lyrics",
                "seed": 1,
                "duration_seconds": 20.0,
                "levels_mask": 0,
                "audio": b"OggS",
                "audio_format": "ogg",
                "created_at": created,
            }
            for job_id, created in succeeded
        ]
        await connection.execute(insert(SampleRow), sample_rows)
        sample_ids = list(await connection.scalars(select(SampleRow.id).order_by(SampleRow.id)))
        vote_rows = [
            {"sample_id": sample_id, "user_id": USER + voter, "created_at": clock.now}
            for sample_id in sample_ids[::3]
            for voter in range(2)
        ]
        await connection.execute(insert(VoteRow), vote_rows)
    if store.engine.dialect.name == "postgresql":
        async with store.engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.exec_driver_sql("ANALYZE jobs, samples, votes")


@contextlib.contextmanager
def captured_selects(engine: AsyncEngine, verb: str = "SELECT") -> Iterator[list[tuple[str, Any]]]:
    """The statements beginning with `verb` sent to the database inside, with their parameters, as the
    driver got them."""
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith(verb):
            statements.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        yield statements
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", capture)


async def plan_of(store: JobStore, call: Callable[[], Awaitable[object]], verb: str = "SELECT") -> list[str]:
    """The plan of the one statement beginning with `verb` that `call` runs, one line per step."""
    with captured_selects(store.engine, verb) as statements:
        await call()
    assert len(statements) == 1, statements
    ((statement, parameters),) = statements
    sqlite = store.engine.dialect.name == "sqlite"
    async with store.engine.connect() as connection:
        explained = await connection.exec_driver_sql(
            ("EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN ") + statement, parameters
        )
        return [str(row[-1] if sqlite else row[0]) for row in explained]


def full_scans(plan: list[str], *tables: str) -> list[str]:
    """Plan lines that read every row of one of `tables` (a table scan, or a scan of a whole index)."""
    return [
        line
        for line in plan
        for table in tables
        if line.strip().startswith(f"SCAN {table}")  # SQLite: SEARCH is a lookup, SCAN reads it all
        or f"Seq Scan on {table} " in f"{line} "  # Postgres
    ]


async def test_unposted_jobs_of_a_server_read_only_its_unposted_rows_in_order(
    store: JobStore, clock: FakeClock
) -> None:
    await seed(store, clock)
    plan = await plan_of(store, lambda: store.finished_jobs_unposted(GUILD, limit=25))
    text = "\n".join(plan)
    assert UNPOSTED_INDEX in text, text  # failed before 0010: ix_jobs_guild, then a sort of all of them
    assert full_scans(plan, "jobs") == [], text
    if store.engine.dialect.name == "sqlite":
        # the index hands the rows over in the order asked for: no sort of the server's jobs
        assert any(f"USING INDEX {UNPOSTED_INDEX} (guild_id=?)" in line for line in plan), text
        assert "TEMP B-TREE" not in text, text
    assert len(await store.finished_jobs_unposted(GUILD, limit=25)) == 5


async def test_unposted_jobs_of_every_server_read_only_unposted_rows(
    store: JobStore, clock: FakeClock
) -> None:
    await seed(store, clock)
    plan = await plan_of(store, lambda: store.finished_jobs_unposted(None, limit=25))
    text = "\n".join(plan)
    # only jobs whose results are not out are read: a lookup in ix_jobs_unposted, or the partial index
    # (whose rows are those jobs), never every finished job (e.g. SQLite's SEARCH … ix_jobs_claim (status=?))
    assert [line for line in full_scans(plan, "jobs") if UNPOSTED_INDEX not in line] == [], text
    if store.engine.dialect.name == "sqlite":
        jobs_lines = [line for line in plan if line.strip().startswith(("SEARCH jobs", "SCAN jobs"))]
        assert jobs_lines, text
        assert all("ix_jobs_unposted" in line or UNPOSTED_INDEX in line for line in jobs_lines), text
    else:
        assert "ix_jobs_unposted" in text or UNPOSTED_INDEX in text, text
    assert len(await store.finished_jobs_unposted(limit=25)) == 5


async def test_the_servers_with_results_waiting_are_found_reading_only_unposted_rows(
    store: JobStore, clock: FakeClock
) -> None:
    await seed(store, clock)
    plan = await plan_of(store, store.guilds_with_results_unposted)
    text = "\n".join(plan)
    assert [line for line in full_scans(plan, "jobs") if UNPOSTED_INDEX not in line] == [], text
    assert "ix_jobs_unposted" in text or UNPOSTED_INDEX in text, text
    assert await store.guilds_with_results_unposted() == {GUILD}


async def test_top_samples_count_only_the_server_s_votes(store: JobStore, clock: FakeClock) -> None:
    await seed(store, clock)
    for since in (None, clock.now - timedelta(days=30)):
        plan = await plan_of(store, lambda since=since: store.top_samples(GUILD, since=since))  # type: ignore[misc]
        text = "\n".join(plan)
        # failed before: every server's votes were counted (SQLite: SCAN votes USING COVERING INDEX …)
        assert full_scans(plan, "votes", "jobs") == [], text
        if store.engine.dialect.name == "sqlite":  # the unique constraint's index is sqlite_autoindex_votes_1
            assert any(line.strip().startswith("SEARCH votes USING COVERING INDEX") for line in plan), text
            assert any(line.endswith("(sample_id=?)") and "votes" in line for line in plan), text
        else:
            assert VOTES_INDEX in text, text


async def test_the_migrated_unposted_index_holds_only_unposted_jobs(store: JobStore) -> None:
    """Built by migration 0010 (the `db_url` databases are migrated) as the partial index the models say."""
    async with store.engine.connect() as connection:
        if store.engine.dialect.name == "sqlite":
            query = "SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?"
        else:
            query = "SELECT indexdef FROM pg_indexes WHERE indexname = $1"
        definition = (await connection.exec_driver_sql(query, (UNPOSTED_INDEX,))).scalar_one()
    assert "(guild_id, finished_at, id)" in definition, definition
    assert "WHERE results_posted_at IS NULL" in definition.replace(
        "(results_posted_at IS NULL)", "results_posted_at IS NULL"
    )


async def test_whether_a_job_upsamples_a_sample_or_uses_a_clip_is_a_lookup(
    store: JobStore, clock: FakeClock
) -> None:
    """Asked under the enqueue lock at every Upsample click (every server's enqueue waits on it), and
    for every clip dropped: both read every job before 0011."""
    await seed(store, clock)
    clip = await store.store_prime(user_id=USER, filename="a.wav", pcm=b"\x00\x00" * 10, sample_rate=44_100)
    _, (sample_id,) = await finished_job(store)
    if store.engine.dialect.name == "postgresql":
        async with store.engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.exec_driver_sql("ANALYZE jobs")

    async def covering() -> None:
        async with store.engine.connect() as connection:
            await _upsample_covering(connection, sample_id)

    plans = {
        "ix_jobs_parent_sample_id": await plan_of(store, covering),
        "ix_jobs_prime_id": await plan_of(store, lambda: store.discard_prime(clip), "DELETE"),
    }
    for index, plan in plans.items():
        text = "\n".join(plan)
        assert index in text and full_scans(plan, "jobs") == [], text


# ---------------------------------------------------------------- results the rewritten queries give


async def test_top_samples_rank_only_the_server_s_samples_by_their_votes_since(
    store: JobStore, clock: FakeClock
) -> None:
    other = GUILD + 1
    _, (old_popular,) = await finished_job(store)
    _, (other_old,) = await finished_job(store, guild_id=other)
    clock.advance(3600)
    since = clock.now
    _, (tied_first, tied_second) = await finished_job(store, samples=2)  # same time: newest id first
    _, (other_new, other_newer) = await finished_job(store, samples=2, guild_id=other)
    clock.advance(60)
    _, (newest,) = await finished_job(store)
    _, (quiet,) = await finished_job(store)
    votes = {
        old_popular: 4,
        other_old: 9,
        tied_first: 2,
        tied_second: 2,
        other_new: 5,
        other_newer: 1,
        newest: 1,
    }
    for sample_id, count in votes.items():
        for user in range(count):
            await store.toggle_vote(sample_id, USER + user)

    ranked = await store.top_samples(GUILD)
    assert [(r.sample.id, r.votes) for r in ranked] == [
        (old_popular, 4),
        (tied_second, 2),
        (tied_first, 2),
        (newest, 1),
        (quiet, 0),
    ]
    assert [(r.sample.id, r.votes) for r in await store.top_samples(GUILD, since=since, limit=3)] == [
        (tied_second, 2),
        (tied_first, 2),
        (newest, 1),
    ]
    assert [(r.sample.id, r.votes) for r in await store.top_samples(other, since=since)] == [
        (other_new, 5),
        (other_newer, 1),
    ]
    assert [(r.sample.id, r.votes) for r in await store.top_samples(other)] == [
        (other_old, 9),
        (other_new, 5),
        (other_newer, 1),
    ]
    assert await store.top_samples(GUILD, since=clock.now + timedelta(seconds=1)) == []


async def test_unposted_jobs_of_each_server_and_of_all_in_finish_order(
    store: JobStore, clock: FakeClock
) -> None:
    other = GUILD + 1
    first, _ = await finished_job(store)
    clock.advance(10)
    other_first, _ = await finished_job(store, guild_id=other)
    clock.advance(10)
    posted, _ = await finished_job(store)
    clock.advance(10)
    second, _ = await finished_job(store)
    clock.advance(10)
    other_second, _ = await finished_job(store, guild_id=other)
    clock.advance(10)
    posting, _ = await finished_job(store, guild_id=other)
    await enqueue(store)  # queued: no results yet, not listed
    assert await store.claim_results_posting(posted, "bot", lease_seconds=60) is not None
    assert await store.finish_results_posting(posted, "bot")
    assert await store.claim_results_posting(posting, "bot", lease_seconds=60) is not None  # held now

    assert [job.id for job in await store.finished_jobs_unposted(GUILD)] == [first, second]
    assert [job.id for job in await store.finished_jobs_unposted(other)] == [other_first, other_second]
    assert [job.id for job in await store.finished_jobs_unposted()] == [
        first,
        other_first,
        second,
        other_second,
    ]
    assert [job.id for job in await store.finished_jobs_unposted(limit=3)] == [first, other_first, second]
    assert await store.finished_jobs_unposted(GUILD + 2) == []
