"""The live progress a member watches: the real store, played like a worker, and the real text."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from bot.progress import MARK_CANCELLED, MARK_CANCELLING, MARK_FAILED, MARK_QUEUED, render_job, render_queue
from sampler.jobspec import JobParams
from storage import JobKind, JobStatus, JobStore
from storage.records import LevelWindow
from storage.store import queue_places
from tests.bot.harness import PlayedWorker
from tests.conftest import FakeClock

USER, CHANNEL, GUILD = 444_444_444_444_444_444, 555_555_555_555_555_555, 666_666_666_666_666_666
PERCENT = re.compile(r"(\d+)%`")


async def enqueue(store: JobStore, *, levels: str = "all", **fields: Any) -> int:
    params = JobParams(artist="the beatles", genres=("rock",), seconds=20.0, n_samples=2, levels=levels)
    values: dict[str, Any] = {
        "kind": JobKind.GENERATE,
        "model": "5b_lyrics",
        "params": params.to_json(),
        "channel_id": CHANNEL,
        "user_id": USER,
        "guild_id": GUILD,
    }
    values.update(fields)
    return await store.enqueue(**values)


async def shown(store: JobStore, job_id: int, clock: FakeClock) -> str:
    job = await store.get_job(job_id)
    places = queue_places(await store.unfinished_jobs(), await store.served_models())
    return render_job(job, places=places, now=clock.now)


def percent(text: str) -> int:
    match = PERCENT.search(text)
    assert match, text
    return int(match.group(1))


async def report(
    store: JobStore,
    worker: PlayedWorker,
    job_id: int,
    clock: FakeClock,
    *,
    stage: str,
    done: int,
    total: int,
    level: int | None = None,
    window: int | None = None,
    of: int | None = None,
    eta_s: float | None = None,
    level_windows: tuple[LevelWindow, ...] = (),
) -> None:
    await store.report_progress(
        job_id,
        worker.worker_id,
        stage=stage,
        progress=done / total,
        level=level,
        window=window,
        window_count=of,
        tokens_done=done,
        tokens_total=total,
        tokens_per_second=50.0 if eta_s is not None else None,
        eta_at=clock.now + timedelta(seconds=eta_s) if eta_s is not None else None,
        level_windows=level_windows,
    )


async def test_a_full_job_goes_up_through_the_levels_and_shows_100_only_when_done(
    store: JobStore, clock: FakeClock
) -> None:
    worker = PlayedWorker(store)
    job_id = await enqueue(store)
    job = await worker.claim()
    seen = []
    steps = [(2, 1, 3, 100), (2, 3, 3, 300), (1, 1, 4, 500), (1, 4, 4, 900), (0, 2, 8, 1500), (0, 8, 8, 2000)]
    for level, window, of, done in steps:
        await report(
            store,
            worker,
            job_id,
            clock,
            stage="sampling" if level == 2 else "upsampling",
            done=done,
            total=2000,
            level=level,
            window=window,
            of=of,
            eta_s=3 * 3600,
        )
        text = await shown(store, job_id, clock)
        assert f"window {window}/{of}" in text
        assert {2: "top level (preview)", 1: "middle level", 0: "bottom level (full quality)"}[level] in text
        assert "done <t:" in text  # hours away: Discord's relative time, readable in each client
        seen.append(percent(text))
    # all tokens sampled: the audio is decoded and compressed next (minutes for many samples)
    await report(store, worker, job_id, clock, stage="decoding audio", done=2000, total=2000)
    text = await shown(store, job_id, clock)
    assert "decoding audio" in text
    seen.append(percent(text))
    assert seen == sorted(seen) and all(0 <= p < 100 for p in seen), seen
    listing = render_queue([await store.get_job(job_id)], queue_places([], set()), [], clock.now)
    assert "running, 99%" in listing
    await worker.complete(job, n=2, full=True)
    assert (await shown(store, job_id, clock)).endswith("✅ Done: below.")


async def test_a_requeued_job_shows_waiting_and_its_resume_never_goes_backwards(
    store: JobStore, clock: FakeClock
) -> None:
    first = PlayedWorker(store, worker_id="dies")
    job_id = await enqueue(store)
    await first.claim()
    await report(
        store,
        first,
        job_id,
        clock,
        stage="sampling",
        done=600,
        total=1000,
        level=2,
        window=2,
        of=3,
        eta_s=600,
    )
    await store.save_checkpoint(job_id, first.worker_id, b"state")
    before = percent(await shown(store, job_id, clock))
    clock.advance(3600)
    assert await store.requeue_expired(now=clock.now + timedelta(hours=1)) == []  # seen run out…
    assert await store.requeue_expired(now=clock.now + timedelta(days=2)) == [(job_id, JobStatus.QUEUED)]
    text = await shown(store, job_id, clock)
    assert text.splitlines()[-1].startswith(f"{MARK_QUEUED} Queued:") and "(attempt 2)" in text
    assert "Running" not in text and "done <t:" not in text
    second = PlayedWorker(store, worker_id="second")
    claimed = await second.claim()
    assert claimed.id == job_id and claimed.has_checkpoint and claimed.progress == before / 100


async def test_levels_sampling_at_once_are_each_named(store: JobStore, clock: FakeClock) -> None:
    worker = PlayedWorker(store)
    job_id = await enqueue(store)
    await worker.claim()
    await report(
        store,
        worker,
        job_id,
        clock,
        stage="upsampling",
        done=900,
        total=2000,
        level=0,
        window=2,
        of=8,
        level_windows=(LevelWindow(1, 4, 4), LevelWindow(0, 2, 8)),
        eta_s=90,
    )
    text = await shown(store, job_id, clock)
    assert "middle level window 4/4 · bottom level (full quality) window 2/8" in text
    assert percent(text) == 45


async def test_preview_upsample_and_continue_name_their_levels(store: JobStore, clock: FakeClock) -> None:
    worker = PlayedWorker(store)
    preview_id = await enqueue(store, levels="top")
    preview = await worker.claim()
    await report(
        store, worker, preview_id, clock, stage="sampling", done=50, total=100, level=2, window=5, of=9
    )
    text = await shown(store, preview_id, clock)
    assert "sampling · top level (preview) · window 5/9" in text and "· preview" in text
    sample_ids = await worker.complete(preview, n=1, full=False)
    up_id = await enqueue(store, kind=JobKind.UPSAMPLE, parent_sample_id=sample_ids[0])
    await worker.claim()
    await report(store, worker, up_id, clock, stage="upsampling", done=10, total=100, level=1, window=1, of=4)
    text = await shown(store, up_id, clock)
    assert "upsample of sample #" in text and "upsampling · middle level · window 1/4" in text
    assert "top level" not in text


async def test_cancel_and_failure_mid_level_end_without_a_running_bar(
    store: JobStore, clock: FakeClock
) -> None:
    worker = PlayedWorker(store)
    cancelled = await enqueue(store)
    await worker.claim()
    await report(
        store,
        worker,
        cancelled,
        clock,
        stage="upsampling",
        done=700,
        total=1000,
        level=1,
        window=2,
        of=4,
        eta_s=300,
    )
    assert await store.request_cancel(cancelled, USER) is JobStatus.CANCELLING
    text = await shown(store, cancelled, clock)
    assert text.splitlines()[-1].startswith(f"{MARK_CANCELLING} Cancelling") and "%" not in text
    await worker.cancelled(cancelled)
    text = await shown(store, cancelled, clock)
    assert text.splitlines()[-1] == f"{MARK_CANCELLED} Cancelled." and "%" not in text
    failed = await enqueue(store)
    await worker.claim()
    await report(
        store,
        worker,
        failed,
        clock,
        stage="upsampling",
        done=700,
        total=1000,
        level=0,
        window=3,
        of=8,
        eta_s=300,
    )
    await store.fail(failed, worker.worker_id, "out of memory")
    text = await shown(store, failed, clock)
    assert text.splitlines()[-1] == f"{MARK_FAILED} Failed: out of memory" and "done <t:" not in text


async def test_an_eta_already_past_says_finishing_not_minus_time(store: JobStore, clock: FakeClock) -> None:
    worker = PlayedWorker(store)
    job_id = await enqueue(store)
    await worker.claim()
    await report(
        store, worker, job_id, clock, stage="sampling", done=50, total=100, level=2, window=2, of=3, eta_s=30
    )
    clock.advance(90)  # the worker's estimate ran out before the window did
    text = await shown(store, job_id, clock)
    assert "finishing" in text and "done <t:" not in text and percent(text) == 50
