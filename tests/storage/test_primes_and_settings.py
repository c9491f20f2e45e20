"""Uploaded clips, per-server settings, and the engine's database settings."""

from __future__ import annotations

import dataclasses
import struct
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine

from storage import GuildSettings, InvalidGuildSettings, InvalidPrime, JobStore
from storage.engine import SQLITE_BUSY_TIMEOUT_MS
from tests.conftest import FakeClock
from tests.storage.helpers import GUILD, USER, enqueue, row_counts


async def test_prime_round_trip_and_job_reference(store: JobStore, clock: FakeClock) -> None:
    pcm = struct.pack("<4h", 0, 1000, -1000, 32767) * 44_100  # 4 s of 16-bit mono at 44.1 kHz
    prime_id = await store.store_prime(
        user_id=USER, guild_id=GUILD, filename="riff.m4a", pcm=pcm, sample_rate=44_100
    )
    prime = await store.get_prime(prime_id)
    assert (prime.pcm, prime.sample_rate, prime.duration_seconds) == (pcm, 44_100, 4.0)
    assert (prime.filename, prime.user_id, prime.created_at) == ("riff.m4a", USER, clock.now)
    job_id = await enqueue(store, prime_id=prime_id)
    assert (await store.get_job(job_id)).prime_id == prime_id


async def test_bad_primes_write_nothing(store: JobStore) -> None:
    before = await row_counts(store.engine)
    with pytest.raises(InvalidPrime, match="no audio"):
        await store.store_prime(user_id=USER, filename="silence.wav", pcm=b"", sample_rate=44_100)
    with pytest.raises(InvalidPrime, match="odd number of bytes"):
        await store.store_prime(user_id=USER, filename="odd.wav", pcm=b"\x00\x01\x02", sample_rate=44_100)
    assert await row_counts(store.engine) == before


async def test_guild_settings_default_set_replace(store: JobStore, clock: FakeClock) -> None:
    assert await store.get_guild_settings(GUILD) == GuildSettings(guild_id=GUILD)
    stored = await store.set_guild_settings(
        GuildSettings(
            guild_id=GUILD, max_length_seconds=90.0, max_samples_per_job=2, allowed_channel_ids=(5, 6)
        )
    )
    assert stored.max_length_seconds == 90.0 and stored.allowed_channel_ids == (5, 6)
    assert stored.updated_at == clock.now
    clock.advance(10)
    changed = await store.set_guild_settings(dataclasses.replace(stored, allowed_channel_ids=None))
    assert changed == dataclasses.replace(stored, allowed_channel_ids=None, updated_at=clock.now)
    assert await store.get_guild_settings(GUILD) == changed
    assert await store.get_guild_settings(GUILD + 1) == GuildSettings(guild_id=GUILD + 1)


@pytest.mark.parametrize(
    "overrides",
    [
        {"max_length_seconds": 0.0},
        {"max_length_seconds": float("inf")},
        {"max_samples_per_job": 17},
        {"max_running_jobs_per_user": 0},
        {"allowed_channel_ids": (1, -2)},
    ],
)
async def test_bad_guild_settings_change_nothing(store: JobStore, overrides: dict[str, object]) -> None:
    before = await store.set_guild_settings(GuildSettings(guild_id=GUILD, max_queued_jobs_per_user=4))
    with pytest.raises(InvalidGuildSettings, match="nothing was changed"):
        await store.set_guild_settings(dataclasses.replace(before, **overrides))  # type: ignore[arg-type]
    assert await store.get_guild_settings(GUILD) == before


async def test_engine_enforces_foreign_keys_and_stores_utc(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            # WAL + a busy timeout: concurrent writers wait instead of failing.
            assert await connection.scalar(text("PRAGMA journal_mode")) == "wal"
            assert await connection.scalar(text("PRAGMA busy_timeout")) == SQLITE_BUSY_TIMEOUT_MS
            assert await connection.scalar(text("PRAGMA foreign_keys")) == 1
        else:
            column_type = await connection.scalar(
                text(
                    "SELECT data_type FROM information_schema.columns WHERE table_name = 'jobs' AND "
                    "column_name = 'created_at'"
                )
            )
            assert column_type == "timestamp with time zone"
    with pytest.raises(IntegrityError):
        async with engine.begin() as connection:
            await connection.execute(
                text("INSERT INTO votes (sample_id, user_id, created_at) VALUES (12345, 1, :now)"),
                {"now": datetime(2025, 1, 1)},
            )
    assert (await row_counts(engine))["votes"] == 0


async def test_times_come_back_as_aware_utc(store: JobStore) -> None:
    local = datetime(2025, 6, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    tokyo_store = JobStore(store.engine, clock=lambda: local)
    job = await tokyo_store.get_job(await enqueue(tokyo_store))
    assert job.created_at == local and job.created_at.utcoffset() == timedelta(0)
    with pytest.raises(StatementError, match="timezone-aware"):
        await JobStore(store.engine, clock=lambda: datetime(2025, 1, 1)).enqueue(
            kind="generate", model="5b", params={}, channel_id=1, user_id=1
        )
