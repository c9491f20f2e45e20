"""The workers registry: which models some live worker serves, for the bot's model choice."""

from __future__ import annotations

from storage import JobStore
from storage.store import FORGET_WORKER_AFTER, WORKER_STALE_SECONDS, workers
from tests.conftest import FakeClock


async def test_served_models_are_those_of_live_workers(store: JobStore, clock: FakeClock) -> None:
    assert await store.served_models() == frozenset()
    await store.record_worker("gpu-box/1/cuda:0", ["1b_lyrics"])
    await store.record_worker("gpu-box/2/cuda:1", [])  # no complete model yet
    assert await store.served_models() == {"1b_lyrics"}

    await store.record_worker("gpu-box/2/cuda:1", ["5b_lyrics", "1b_lyrics"])  # its download finished
    assert await store.served_models() == {"1b_lyrics", "5b_lyrics"}

    clock.advance(WORKER_STALE_SECONDS - 1)
    await store.record_worker("gpu-box/2/cuda:1", ["5b_lyrics"])  # still alive; 1b_lyrics was removed
    clock.advance(2)  # the first worker has been silent too long: killed, or its machine is down
    assert await store.served_models() == {"5b_lyrics"}

    await store.forget_worker("gpu-box/2/cuda:1")  # a graceful stop
    assert await store.served_models() == frozenset()


async def test_rows_of_long_dead_workers_are_deleted(store: JobStore, clock: FakeClock) -> None:
    await store.record_worker("old/1/cpu", ["5b"])
    clock.advance(FORGET_WORKER_AFTER.total_seconds() + 1)
    await store.record_worker("new/1/cpu", ["5b"])
    async with store.engine.connect() as connection:
        rows = (await connection.execute(workers.select())).all()
    assert [row.worker_id for row in rows] == ["new/1/cpu"]
