"""Small builders shared by the storage tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from storage import JobKind, JobStore, NewSample
from storage.models import Base, JobRow

GUILD = 111_111_111_111_111_111
CHANNEL = 222_222_222_222_222_222
USER = 333_333_333_333_333_333
MODEL = "5b_lyrics"


async def enqueue(store: JobStore, **fields: Any) -> int:
    values: dict[str, Any] = {
        "kind": JobKind.GENERATE,
        "model": MODEL,
        "params": {"artist": "the beatles", "genre": "rock", "lyrics": "la la la", "seconds": 20},
        "guild_id": GUILD,
        "channel_id": CHANNEL,
        "user_id": USER,
    }
    values.update(fields)
    return await store.enqueue(**values)


def new_sample(index: int = 0, **fields: Any) -> NewSample:
    values: dict[str, Any] = {
        "index": index,
        "seed": 1234 + index,
        "duration_seconds": 20.0,
        "audio": b"OggS" + bytes([index % 256]) * 100,
        "audio_format": "ogg",
        "audio_bitrate": 96_000,
        "codes_level_2": (abs(index) + 1).to_bytes(2, "little") * 50,
    }
    values.update(fields)
    return NewSample(**values)


async def finished_job(store: JobStore, samples: int = 1, **fields: Any) -> tuple[int, list[int]]:
    """A job that ran and succeeded with `samples` samples: (job id, sample ids)."""
    job_id = await enqueue(store, **fields)
    claimed = await store.claim("setup-worker", [fields.get("model", MODEL)], lease_seconds=60)
    assert claimed is not None and claimed.id == job_id
    sample_ids = await store.complete(job_id, "setup-worker", [new_sample(i) for i in range(samples)])
    return job_id, sample_ids


async def row_counts(engine: AsyncEngine) -> dict[str, int]:
    """Rows in every table: compare before/after to prove nothing was written."""
    counts = {}
    async with engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            counts[table.name] = int(await connection.scalar(select(func.count()).select_from(table)) or 0)
    return counts


@contextlib.asynccontextmanager
async def write_held(engine: AsyncEngine, job_id: int) -> AsyncIterator[None]:
    """Inside: another connection's write transaction on the job's row, as a worker's long checkpoint
    write holds it (on SQLite, the one write lock); committed on the way out."""
    holding, release = asyncio.Event(), asyncio.Event()

    async def hold_a_write() -> None:
        async with engine.connect() as connection:
            transaction = await connection.begin()  # SQLite: BEGIN IMMEDIATE, the write lock
            await connection.execute(update(JobRow).where(JobRow.id == job_id).values(stage="checkpointing"))
            holding.set()
            await release.wait()
            await transaction.commit()

    writer = asyncio.create_task(hold_a_write())
    try:
        await holding.wait()
        yield
    finally:
        release.set()
        await writer
