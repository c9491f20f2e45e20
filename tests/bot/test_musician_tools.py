"""The musician-facing tools through the real store: a continued curated piece's picture."""

from __future__ import annotations

import numpy as np
import pytest

from bot.pictures import prime_part_seconds
from sampler.audio import SAMPLE_RATE, encode_audio
from storage.records import NewSample
from storage.store import JobStore
from tests.bot.harness import PlayedWorker, tone


async def test_a_continued_pieces_prime_part_is_its_ingredients_codes_not_its_shorter_audio(
    db_store: JobStore,
) -> None:
    store = db_store
    # Two 10 s ingredients, trimmed and crossfaded into a 15 s piece; its stored top-level codes are
    # both ingredients' codes end to end (20 s), and a continue starts from all of them.
    codes = np.arange(2 * 10 * SAMPLE_RATE // 128, dtype="<i2") % 2048
    _, piece_id = await store.store_curation(
        guild_id=2,
        channel_id=3,
        user_id=1,
        model="5b",
        params={"seconds": 15.0, "n_samples": 1, "levels": "top"},
        sample=NewSample(
            index=0,
            seed=0,
            duration_seconds=15.0,
            audio=encode_audio(tone(15.0), SAMPLE_RATE, "ogg", 64_000),
            audio_format="ogg",
            audio_bitrate=160_000,
            codes_level_2=codes.tobytes(),
        ),
    )
    continue_id = await store.enqueue(
        kind="continue",
        model="5b",
        params={"seconds": 10.0},
        channel_id=3,
        user_id=1,
        guild_id=2,
        parent_sample_id=piece_id,
    )
    codes_seconds = codes.shape[0] * 128 / SAMPLE_RATE
    assert await prime_part_seconds(store, await store.get_job(continue_id)) == pytest.approx(codes_seconds)
    worker = PlayedWorker(store)
    claimed = await worker.claim()
    (continued,) = await worker.complete(claimed, n=1, full=True, seconds=codes_seconds + 10.0)
    upsample_id = await store.enqueue(
        kind="upsample",
        model="5b",
        params={"seconds": 10.0},
        channel_id=3,
        user_id=1,
        guild_id=2,
        parent_sample_id=continued,
    )
    # an upsample of that continuation keeps the same prime part
    assert await prime_part_seconds(store, await store.get_job(upsample_id)) == pytest.approx(codes_seconds)
