"""Workers on several machines share a queue through Postgres; their clocks disagree. Leases are
decided by the database's clock, so a worker whose clock is an hour ahead neither takes the jobs
of others (whose leases look expired to it) nor strands its own (whose leases would look an hour
longer to everyone else)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from storage import JobKind, JobStatus, JobStore
from storage.records import Job
from tests.holding import HOLD_DIR_VARIABLE, held_files
from tests.waiting import wait_until
from tests.worker_processes import REPO, repo_environment

HOUR = 3600.0
MODEL = "5b_lyrics"


async def enqueue(store: JobStore, seed: int) -> int:
    params = {"artist": "the beatles", "genres": ["rock"], "seconds": 2.0, "seed": seed}
    return await store.enqueue(kind=JobKind.GENERATE, model=MODEL, params=params, channel_id=2, user_id=3)


def start_skewed_worker(db_url: str, tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path, Path]:
    hold_dir, log_dir = tmp_path / "holds", tmp_path / "toy-log"
    hold_dir.mkdir()
    log_dir.mkdir()
    env = repo_environment(
        {HOLD_DIR_VARIABLE: str(hold_dir), "JUKEBOT_TOY_LOG_DIR": str(log_dir), "JUKEBOT_TOY_MODELS": MODEL}
    )
    log_file = tmp_path / "skewed-worker.log"
    with open(log_file, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.sampler.worker.skewed_worker", str(HOUR), db_url],
            cwd=REPO,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    return process, hold_dir, log_file


@pytest.fixture
async def skewed_worker(db_url: str, tmp_path: Path) -> AsyncIterator[tuple[subprocess.Popen[bytes], Path]]:
    """A worker process whose clock is an hour ahead; jobs it runs hold after their first checkpoint."""
    if not db_url.startswith("postgresql"):
        pytest.skip("on SQLite every worker runs on the database's machine, with its clock")
    process, hold_dir, log_file = start_skewed_worker(db_url, tmp_path)
    try:
        yield process, hold_dir
    finally:
        if process.poll() is None:
            process.kill()
        await asyncio.to_thread(process.wait, 30)
        print(log_file.read_text(errors="replace")[-4000:])


@pytest.mark.postgres
async def test_a_worker_whose_clock_is_an_hour_ahead_neither_steals_nor_strands_jobs(
    db_url: str, engine: AsyncEngine, skewed_worker: tuple[subprocess.Popen[bytes], Path]
) -> None:
    store = JobStore(engine)  # this machine's clock is right
    theirs = await enqueue(store, seed=1)
    taken = await store.claim("on-time-host/1/cuda:0", [MODEL], lease_seconds=30)
    assert taken is not None and taken.id == theirs

    process, hold_dir = skewed_worker
    mine = await enqueue(store, seed=2)

    seen: set[datetime] = set()  # lease ends it has set

    async def held_with_renewed_leases() -> bool:
        assert process.poll() is None, "the skewed worker exited"
        job = await store.get_job(mine)
        assert job.lease_expires_at is None or job.lease_expires_at - datetime.now(UTC) < timedelta(
            minutes=1
        ), f"the skewed worker's lease ends at {job.lease_expires_at}: an hour late"
        if held_files(hold_dir, mine) and job.lease_expires_at is not None:
            seen.add(job.lease_expires_at)
        return len(seen) >= 3

    # It renews its 5 s lease every 5/3 s and scans for expired leases every 0.2 s meanwhile.
    await wait_until(held_with_renewed_leases, 60, "the skewed worker to hold its job and renew the lease")
    other: Job = await store.get_job(theirs)
    assert other.status is JobStatus.RUNNING and other.attempts == 0, "the skewed worker took the job"
    assert other.lease_owner == "on-time-host/1/cuda:0"

    process.send_signal(signal.SIGKILL)  # it dies holding its job: back once its 5 s lease ends
    await asyncio.to_thread(process.wait, 30)

    async def resumed() -> Job | None:
        claimed = await store.claim("on-time-host/2/cuda:0", [MODEL], lease_seconds=30)
        return None if claimed is None else await store.get_job(claimed.id)

    job = await wait_until(resumed, 30, "the dead skewed worker's job to come back")
    assert job.id == mine and job.attempts == 1 and job.has_checkpoint
