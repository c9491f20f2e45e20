"""The progress a worker writes for a job resumed from a checkpoint, and the runner's own accounting:
a member's bar never goes backwards (a real Worker, a real store, the tiny-model runner)."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
import torch
from sqlalchemy.ext.asyncio import AsyncEngine

from sampler.cascade_runner import CascadeRunner
from sampler.jobspec import JobParams
from sampler.jukebox.cascade import CascadeState
from sampler.worker.contract import (
    DeviceSpec,
    JobFailed,
    JobInterrupted,
    JobTask,
    ProgressReporter,
    Stage,
    StopCheck,
    StopReason,
)
from sampler.worker.runtime import JobOutcome, Worker, WorkerConfig
from storage import JobKind, JobStore
from storage.models import utcnow
from storage.records import NewSample
from tests.tiny_model_dir import write_tiny_model_dir

FAST = WorkerConfig(lease_seconds=30.0, poll_seconds=0.05, progress_seconds=0.01, cancel_poll_seconds=0.1)
WAIT_S = 60.0  # a write that never lands fails the test instead of hanging it


class RecordingStore(JobStore):
    """Keeps every progress fraction written; the runner waits on `written` to see one land."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.fractions: list[float] = []
        self.written = threading.Condition()

    async def report_progress(self, job_id: int, worker_id: str, **fields: Any) -> None:
        await super().report_progress(job_id, worker_id, **fields)
        with self.written:
            self.fractions.append(fields["progress"])
            self.written.notify_all()

    def wait_for(self, count: int) -> None:
        with self.written:
            assert self.written.wait_for(lambda: len(self.fractions) >= count, timeout=WAIT_S)


class ResumingRunner:
    """Reports as the cascade runner does on a resume: loading models (0 of 1 tokens), then sampling
    from where the checkpoint left off, then loading again (a retry in the run, from its newest
    window), then sampling on. Each report waits until it is written."""

    models = frozenset({"5b"})

    def __init__(self, store: RecordingStore) -> None:
        self.store = store

    def warm_up(self, *args: Any, **kwargs: Any) -> None:
        pass

    def run(self, task: JobTask, report: ProgressReporter, should_stop: StopCheck) -> list[NewSample]:
        assert task.checkpoint == b"60 of 100 tokens"
        script = [
            (Stage.LOADING, 0, 1),
            (Stage.SAMPLING, 70, 100),
            (Stage.LOADING, 0, 1),
            (Stage.SAMPLING, 80, 100),
        ]
        for count, (stage, done, total) in enumerate(script, start=1):
            report.progress(stage, 2 if stage == Stage.SAMPLING else None, None, None, done, total)
            self.store.wait_for(count)
        raise JobFailed("stopped here by the test")


async def test_a_resumed_job_never_shows_less_than_its_last_attempt(engine: AsyncEngine) -> None:
    store = RecordingStore(engine)
    params = JobParams(artist="the beatles", genres=("rock",), seconds=1.0, levels="all")
    job_id = await store.enqueue(
        kind=JobKind.GENERATE, model="5b", params=params.to_json(), channel_id=1, user_id=2
    )
    assert await store.claim("died", {"5b"}, 30) is not None
    await store.report_progress(
        job_id, "died", stage="sampling", progress=0.6, tokens_done=60, tokens_total=100
    )
    await store.save_checkpoint(job_id, "died", b"60 of 100 tokens")
    await store.requeue_expired(now=utcnow() + timedelta(hours=1))  # the worker died: seen run out…
    await store.requeue_expired(now=utcnow() + timedelta(days=2))  # …and recovered a lease later
    store.fractions.clear()
    worker = Worker(store, ResumingRunner(store), DeviceSpec.cpu(), config=FAST)  # type: ignore[arg-type]
    try:
        claimed = await store.claim(worker.worker_id, {"5b"}, 30)
        assert claimed is not None and claimed.progress == 0.6
        assert await worker.run_job(claimed) is JobOutcome.FAILED
    finally:
        worker.close()
    assert store.fractions == sorted(store.fractions) and store.fractions[0] >= 0.6, store.fractions


SONG = 2048 / 44100  # two top windows of the tiny model


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory) -> CascadeRunner:
    torch.set_num_threads(1)
    return CascadeRunner(
        DeviceSpec.cpu(), write_tiny_model_dir(tmp_path_factory.mktemp("models"), models=("5b",))
    )


class Fractions:
    """A ProgressReporter keeping what the worker would show (tokens done of the total) while sampling."""

    def __init__(self, stop_after: int | None = None) -> None:
        self.shown: list[float] = []
        self.sampling: list[float] = []
        self.windows: list[tuple[int | None, int | None, int | None]] = []
        self.checkpoints: list[bytes] = []
        # the share of the tokens each checkpoint holds: when levels sample at once, what is shown as it is
        # handed over may count another level's window in flight, which a resume samples again
        self.at_checkpoint: list[float] = []
        self.tokens_total = 0
        self.stop_after = stop_after

    def progress(
        self, stage, level, window, window_count, tokens_done, tokens_total, *, fraction=None, levels=()
    ):  # type: ignore[no-untyped-def]
        shown = fraction if fraction is not None else tokens_done / tokens_total
        self.shown.append(shown)
        self.tokens_total = tokens_total
        if stage in (Stage.SAMPLING, Stage.UPSAMPLING):
            self.sampling.append(shown)
            self.windows.append((level, window, window_count))
            assert window is not None and window_count is not None and 1 <= window <= window_count

    def checkpoint(self, blob: Any) -> None:
        data = blob() if callable(blob) else blob
        self.checkpoints.append(data)
        held = sum(codes.shape[1] for codes in CascadeState.from_bytes(data).codes)  # one sample, no prime
        self.at_checkpoint.append(held / self.tokens_total)

    def should_stop(self) -> StopReason | None:
        return (
            StopReason.SHUTDOWN if self.stop_after is not None and len(self.shown) > self.stop_after else None
        )


@pytest.mark.parametrize("overlap", [False, True], ids=["in-turn", "levels-at-once"])
async def test_the_runner_counts_levels_and_a_resume_without_going_back(
    runner: CascadeRunner, sqlite_store: JobStore, overlap: bool
) -> None:
    params = JobParams(
        artist="Alan Jackson", genres=("country",), seconds=SONG, n_samples=1, seed=5, levels="all"
    )
    await sqlite_store.enqueue(
        kind=JobKind.GENERATE, model="5b", params=params.to_json(), channel_id=1, user_id=2
    )
    claimed = await sqlite_store.claim("w", {"5b"}, 60)
    assert claimed is not None
    runner = CascadeRunner(DeviceSpec.cpu(), runner.model_dir, overlap_levels=overlap)
    first = Fractions(stop_after=20)  # stops while upsampling
    with pytest.raises(JobInterrupted):
        runner.run(JobTask(claimed, None), first, first.should_stop)
    assert first.sampling == sorted(first.sampling) and 0 < first.sampling[-1] < 1
    resumed = Fractions()
    runner.run(JobTask(claimed, first.checkpoints[-1]), resumed, resumed.should_stop)
    # from the checkpoint on: never below the last checkpoint's share, never past 100 %
    assert resumed.sampling == sorted(resumed.sampling) and resumed.sampling[-1] <= 1.0
    assert resumed.sampling[0] >= first.at_checkpoint[-1] > 0
    assert {level for level, _, _ in first.windows + resumed.windows} == {0, 1, 2}
    assert resumed.shown[-1] == 1.0  # decoding: all tokens sampled
