"""The worker pool with the real cascade runner on tiny random-weight models (issues 6 and 7).

Every job is queued through `JobStore` and sampled by real worker processes (`python -m
sampler.worker.pool --runner sampler.cascade_runner:make_runner`, or `jukebot worker`); results are
compared with the same job run in this process without a worker.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from sampler.jukebox.cascade import CascadeState
from sampler.worker.runtime import pid_of
from storage import JobKind, JobStatus, JobStore
from storage.records import Job
from tests.e2e.conftest import (
    SONG,
    USER,
    Services,
    assert_same_codes,
    audio_is_playable,
    enqueue,
    finished,
    gone,
    reference_run,
    stored_codes,
)
from tests.holding import held_files, release_file
from tests.waiting import wait_until

pytestmark = pytest.mark.slow
# A job of many windows (2 samples, all three levels, 71 windows): held after its first, most are left.
LONG_JOB = {"levels": "all", "n_samples": 2, "seconds": 2 * SONG, "seed": 21}
CLAIM_LINE = re.compile(r"job #(\d+) \(\w+, [\w_]+\) claimed by (\S+), attempt (\d+)")


@pytest.fixture
def hold_dir(tmp_path: Path) -> Path:
    path = tmp_path / "holds"
    path.mkdir()
    return path


async def first_checkpoint(store: JobStore, hold_dir: Path, job_id: int) -> Job:
    """Wait until the job holds after its first checkpoint (stored): interrupting it is now mid-job,
    whatever the machine's speed (the pool runs `tests.holding:held_cascade_runner`)."""

    async def held_with_checkpoint() -> Job | None:
        job = await store.get_job(job_id)
        assert not job.finished, f"job #{job_id} ended ({job.status}) before it could be interrupted"
        return job if held_files(hold_dir, job_id) and job.has_checkpoint and job.lease_owner else None

    return await wait_until(held_with_checkpoint, 90, f"job #{job_id} to hold after its first checkpoint")


async def windows_in_checkpoint(store: JobStore, job_id: int) -> int:
    """How many windows the job's stored checkpoint holds (what a resumed run starts from)."""
    resume_from = await store.get_checkpoint(job_id)
    assert resume_from is not None
    return sum(CascadeState.from_bytes(resume_from).windows_done.values())


async def assert_resumed_exactly(
    store: JobStore, model_dir: Path, job_id: int, windows_kept: int, *, attempts: int
) -> None:
    """The job finishes with the codes of an uninterrupted run, sampling only what came after
    its checkpoint, with `attempts` attempts counted."""
    done = await finished(store, job_id, within=120)
    assert done.status is JobStatus.SUCCEEDED, done.error
    assert done.attempts == attempts
    reference = await reference_run(store, model_dir, job_id)
    await assert_same_codes(store, job_id, reference)
    assert 0 < windows_kept < reference.windows


async def test_generate_preview_full_upsample_and_continue(
    services: Services, db_url: str, any_store: JobStore, tiny_models: Path
) -> None:
    store, model_dir = any_store, tiny_models
    pool = services.pool(db_url, model_dir)
    preview = await enqueue(store, model="1b_lyrics", params={"n_samples": 2, "levels": "top", "seed": 5})
    full = await enqueue(store, model="5b", params={"levels": "all", "seed": 3})
    for job_id in (preview, full):
        job = await finished(store, job_id, within=120)
        assert job.status is JobStatus.SUCCEEDED, job.error

    previews = [await store.get_sample(info.id) for info in await store.samples_for_job(preview)]
    assert [sample.levels for sample in previews] == [(2,), (2,)]  # the top level only: a preview
    for sample in previews:
        assert sample.duration_seconds == pytest.approx(SONG, abs=1e-4)
        assert len(stored_codes(sample.codes(2)) or []) == 128
        audio_is_playable(sample.audio, SONG)
    (full_sample,) = [await store.get_sample(info.id) for info in await store.samples_for_job(full)]
    assert full_sample.levels == (0, 1, 2)
    assert [len(stored_codes(full_sample.codes(level)) or []) for level in range(3)] == [512, 256, 128]
    audio_is_playable(full_sample.audio, SONG)

    # Upsample the second preview candidate, and continue it, as the bot's buttons queue them.
    parent = previews[1]
    upsample = await enqueue(
        store,
        model="1b_lyrics",
        kind=JobKind.UPSAMPLE,
        parent_sample_id=parent.id,
        params={"n_samples": 1, "levels": "all", "seed": 5},
    )
    extend = await enqueue(
        store,
        model="1b_lyrics",
        kind=JobKind.CONTINUE,
        parent_sample_id=parent.id,
        params={"n_samples": 1, "seconds": 512 / 44100, "seed": 5},
    )
    for job_id in (upsample, extend):
        job = await finished(store, job_id, within=120)
        assert job.status is JobStatus.SUCCEEDED, job.error
    (upsampled,) = [await store.get_sample(info.id) for info in await store.samples_for_job(upsample)]
    assert upsampled.levels == (0, 1, 2)
    assert stored_codes(upsampled.codes(2)) == stored_codes(parent.codes(2))  # the preview is kept
    assert len(stored_codes(upsampled.codes(0)) or []) == 512
    audio_is_playable(upsampled.audio, SONG)
    (continued,) = [await store.get_sample(info.id) for info in await store.samples_for_job(extend)]
    top = stored_codes(continued.codes(2)) or []
    assert len(top) == 160 and top[:128] == stored_codes(parent.codes(2))
    assert continued.duration_seconds == pytest.approx(2560 / 44100, abs=1e-4)
    audio_is_playable(continued.audio, 2560 / 44100)

    # The workers' codes are exactly what the cascade makes for the same jobs in this process.
    for job_id in (preview, full, upsample, extend):
        await assert_same_codes(store, job_id, await reference_run(store, model_dir, job_id))
    assert await pool.terminate() == 0


async def test_kill_9_mid_job_restarts_the_worker_and_resumes_from_its_checkpoint(
    services: Services, sqlite_url: str, sqlite_store: JobStore, tiny_models: Path, hold_dir: Path
) -> None:
    store = sqlite_store
    pool = services.pool(sqlite_url, tiny_models, hold_dir=hold_dir)
    job_id = await enqueue(store, model="1b_lyrics", params=LONG_JOB)
    owner = (await first_checkpoint(store, hold_dir, job_id)).lease_owner
    assert owner is not None
    killed = pid_of(owner)
    os.kill(killed, signal.SIGKILL)

    async def dead() -> bool:
        return gone(killed)

    await wait_until(dead, 10, f"worker pid {killed} to die")
    release_file(hold_dir, job_id).touch()  # the restarted worker's run goes straight through
    # The dead worker writes nothing more: this checkpoint is what the restarted worker resumes from.
    windows_kept = await windows_in_checkpoint(store, job_id)
    # the lost lease counted once
    await assert_resumed_exactly(store, tiny_models, job_id, windows_kept, attempts=1)
    log = pool.log()
    assert "was killed by SIGKILL" in log
    claims = [match for match in CLAIM_LINE.finditer(log) if int(match.group(1)) == job_id]
    assert [pid_of(match.group(2)) == killed for match in claims] == [True, False]
    assert f"job #{job_id} (generate, 1b_lyrics) claimed by {claims[1].group(2)}, attempt 2, resuming" in log
    assert await pool.terminate() == 0


@pytest.mark.postgres
async def test_two_jukebot_workers_share_one_postgres_queue(
    services: Services, db_url: str, any_store: JobStore, tiny_models: Path
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("two machines share a queue through Postgres")
    store = any_store
    first = services.jukebot_worker(db_url, tiny_models)
    second = services.jukebot_worker(db_url, tiny_models)
    await first.ready()
    await second.ready()
    jobs = [await enqueue(store, model="1b_lyrics", params={"seed": seed}) for seed in range(8)]
    for job_id in jobs:
        job = await finished(store, job_id, within=180)
        assert job.status is JobStatus.SUCCEEDED and job.attempts == 0, job.error
        assert len(await store.samples_for_job(job_id)) == 1

    claims: dict[int, list[str]] = {}
    for service in (first, second):
        for match in CLAIM_LINE.finditer(service.log()):
            claims.setdefault(int(match.group(1)), []).append(service.log_file.name)
    assert sorted(claims) == jobs
    assert all(len(by) == 1 for by in claims.values()), claims  # no job ran twice
    assert {by[0] for by in claims.values()} == {first.log_file.name, second.log_file.name}, claims
    await assert_same_codes(store, jobs[0], await reference_run(store, tiny_models, jobs[0]))
    assert await first.terminate() == 0 and await second.terminate() == 0


async def test_cancel_mid_window_and_missing_model_files(
    services: Services, sqlite_url: str, sqlite_store: JobStore, tiny_models: Path, hold_dir: Path
) -> None:
    store = sqlite_store
    pool = services.pool(sqlite_url, tiny_models, hold_dir=hold_dir)
    job_id = await enqueue(store, model="1b_lyrics", params=LONG_JOB)
    running = await first_checkpoint(store, hold_dir, job_id)
    owner = running.lease_owner
    assert await store.request_cancel(job_id, USER) is JobStatus.CANCELLING
    asked = time.monotonic()
    cancelled = await finished(store, job_id, within=30)
    assert cancelled.status is JobStatus.CANCELLED
    assert time.monotonic() - asked < 5.0  # within seconds, not at the end of the level
    assert await store.samples_for_job(job_id) == []

    # The same worker goes on. A job for a model it does not have is left queued for a machine that
    # has it (never claimed and failed here); the next job runs.
    missing = await enqueue(store, model="5b_lyrics")
    good = await enqueue(store, model="5b")
    release_file(hold_dir, good).touch()
    assert (await finished(store, good)).status is JobStatus.SUCCEEDED
    left = await store.get_job(missing)
    assert left.status is JobStatus.QUEUED and left.attempts == 0 and left.lease_owner is None
    assert owner is not None and "was killed" not in pool.log() and "exited" not in pool.log()
    assert pool.log().count("serving models 1b_lyrics, 5b") == 1  # one worker process did both jobs
    assert await pool.terminate() == 0


async def test_sigterm_releases_the_job_with_its_checkpoint_and_the_next_pool_finishes_it(
    services: Services, sqlite_url: str, sqlite_store: JobStore, tiny_models: Path, hold_dir: Path
) -> None:
    store = sqlite_store
    pool = services.pool(sqlite_url, tiny_models, hold_dir=hold_dir)
    job_id = await enqueue(store, model="1b_lyrics", params=LONG_JOB)
    await first_checkpoint(store, hold_dir, job_id)
    assert await pool.terminate(signal.SIGTERM) == 0
    released = await store.get_job(job_id)
    assert released.status is JobStatus.QUEUED and released.attempts == 0
    assert released.has_checkpoint and released.lease_owner is None and released.error is None
    assert f"job #{job_id} released" in pool.log()
    windows_kept = await windows_in_checkpoint(store, job_id)

    release_file(hold_dir, job_id).touch()
    second = services.pool(sqlite_url, tiny_models, hold_dir=hold_dir)
    await assert_resumed_exactly(store, tiny_models, job_id, windows_kept, attempts=0)
    assert "resuming from a checkpoint" in second.log()
    assert await second.terminate() == 0
