"""The real job runner on tiny models: every job kind, resume after an interruption, cancel, failures."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from sampler.audio import SAMPLE_RATE, decode_audio, to_int16_pcm
from sampler.cascade_runner import CascadeRunner, codes_from_bytes
from sampler.jobspec import JobParams, Style
from sampler.jukebox.cascade import CascadeState, SampleStyle
from sampler.jukebox.registry import MODELS
from sampler.model_files import model_path
from sampler.worker.contract import (
    DeviceSpec,
    JobCancelled,
    JobInterrupted,
    JobTask,
    LevelProgress,
    ModelNotHere,
    Stage,
    StopReason,
)
from sampler.worker.runtime import JobOutcome, Worker
from storage import JobStatus
from storage.records import NewSample
from storage.store import JobStore
from tests.sampler.jukebox.conftest import tiny_audio
from tests.tiny_model_dir import write_tiny_model_dir

SONG = 2048 / 44100  # seconds: two top windows of the tiny model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model_dir(tmp_path_factory.mktemp("models"), models=("1b_lyrics", "5b"))


@pytest.fixture(scope="module")
def runner(model_dir: Path) -> CascadeRunner:
    torch.set_num_threads(1)
    return CascadeRunner(DeviceSpec.cpu(), model_dir)


class Recorder:
    """A ProgressReporter that keeps everything, and can ask the run to stop after N reports."""

    def __init__(self, stop_after: int | None = None, reason: StopReason = StopReason.SHUTDOWN) -> None:
        self.reports: list[tuple[object, ...]] = []
        self.levels: list[tuple[LevelProgress, ...]] = []  # each report's levels
        self.checkpoints: list[bytes] = []
        self.handed_over: list[bytes | Callable[[], bytes]] = []  # as the runner handed them over
        self.stop_after, self.reason = stop_after, reason

    def progress(
        self, stage, level, window, window_count, tokens_done, tokens_total, *, fraction=None, levels=()
    ):  # type: ignore[no-untyped-def]
        self.reports.append((str(stage), level, window, tokens_done, tokens_total))
        self.levels.append(tuple(levels))

    def checkpoint(self, blob: bytes | Callable[[], bytes]) -> None:
        self.handed_over.append(blob)
        self.checkpoints.append(blob() if callable(blob) else blob)

    def should_stop(self) -> StopReason | None:
        if self.stop_after is not None and len(self.reports) > self.stop_after:
            return self.reason
        return None


async def claim(store: JobStore, **job: object) -> JobTask:
    params = job.pop("params")
    assert isinstance(params, JobParams)
    await store.enqueue(channel_id=1, user_id=2, guild_id=3, params=params.to_json(), **job)  # type: ignore[arg-type]
    claimed = await store.claim("w", {"1b_lyrics", "5b"}, 60)
    assert claimed is not None
    parent = await store.get_sample(claimed.parent_sample_id) if claimed.parent_sample_id else None
    prime = await store.get_prime(claimed.prime_id) if claimed.prime_id else None
    return JobTask(claimed, claimed.checkpoint, parent, prime)


def run(runner: CascadeRunner, task: JobTask, recorder: Recorder | None = None) -> list[NewSample]:
    recorder = recorder or Recorder()
    return runner.run(task, recorder, recorder.should_stop)


async def complete(store: JobStore, task: JobTask, samples: list[NewSample]) -> list[int]:
    return await store.complete(task.job.id, "w", samples)


PREVIEW = JobParams(
    artist="Alan Jackson", genres=("country",), lyrics="Chattahoochee", seconds=SONG, n_samples=2, seed=5
)


async def test_preview_then_upsample_then_continue(runner: CascadeRunner, sqlite_store: JobStore) -> None:
    task = await claim(sqlite_store, kind="generate", model="1b_lyrics", params=PREVIEW)
    recorder = Recorder()
    samples = run(runner, task, recorder)
    assert len(samples) == 2 and len(recorder.checkpoints) == 9  # 128 top tokens, windows of 64, hop 8
    # A checkpoint serialised long after it was handed over (the worker holds back fast ones) is
    # still the state at its window, not a later one.
    late = [blob() if callable(blob) else blob for blob in recorder.handed_over]
    assert late == recorder.checkpoints
    assert [CascadeState.from_bytes(blob).windows_done[2] for blob in late] == list(range(1, 10))
    assert samples[0].codes_level_1 is None and samples[0].codes_level_2 is not None
    assert recorder.reports[-1][0] == "decoding audio"
    assert any(r[0] == "sampling" for r in recorder.reports)
    audio = decode_audio(samples[0].audio, silence_threshold_db=None)
    assert abs(audio.shape[0] - 2048) < 100
    ids = await complete(sqlite_store, task, samples)

    up = await claim(
        sqlite_store,
        kind="upsample",
        model="1b_lyrics",
        params=PREVIEW.model_copy(update={"n_samples": 1}),
        parent_sample_id=ids[1],
    )
    upsampled = run(runner, up)
    assert (
        codes_from_bytes(upsampled[0].codes_level_2).tolist()
        == codes_from_bytes(samples[1].codes_level_2).tolist()
    )  # type: ignore[union-attr]
    assert codes_from_bytes(upsampled[0].codes_level_0).shape == (512,)  # type: ignore[union-attr]
    up_ids = await complete(sqlite_store, up, upsampled)

    more = PREVIEW.model_copy(update={"n_samples": 1, "seconds": 512 / SAMPLE_RATE, "levels": "all"})
    cont = await claim(
        sqlite_store, kind="continue", model="1b_lyrics", params=more, parent_sample_id=up_ids[0]
    )
    continued = run(runner, cont)
    top = codes_from_bytes(continued[0].codes_level_2)
    assert top is not None and top.shape == (160,)
    assert top[:128].tolist() == codes_from_bytes(samples[1].codes_level_2).tolist()  # type: ignore[union-attr]
    assert codes_from_bytes(continued[0].codes_level_0).shape == (640,)  # type: ignore[union-attr]


async def test_primed_generation_continues_the_clip(runner: CascadeRunner, sqlite_store: JobStore) -> None:
    clip = tiny_audio(batch=1, samples=1024)[0].numpy()
    prime_id = await sqlite_store.store_prime(
        user_id=2, filename="clip.wav", pcm=to_int16_pcm(clip).tobytes(), sample_rate=SAMPLE_RATE
    )
    params = PREVIEW.model_copy(update={"prime_seconds": 512 / SAMPLE_RATE, "n_samples": 1})
    task = await claim(sqlite_store, kind="generate", model="1b_lyrics", params=params, prime_id=prime_id)
    samples = run(runner, task)
    top = codes_from_bytes(samples[0].codes_level_2)
    assert top is not None and top.shape == (2048 // 16,)  # the length includes the prime
    prompt = torch.from_numpy(
        np.frombuffer(to_int16_pcm(clip[:512]).tobytes(), "<i2").astype(np.float32) / 32768
    )
    expected = runner.cascade("1b_lyrics").vqvae.encode(prompt.unsqueeze(0))[2][0]
    assert top[:32].tolist() == expected.tolist()


async def test_interrupted_job_resumes_to_the_same_codes(
    runner: CascadeRunner, sqlite_store: JobStore
) -> None:
    params = PREVIEW.model_copy(update={"levels": "all", "n_samples": 1})
    unbroken = run(runner, await claim(sqlite_store, kind="generate", model="5b", params=params))
    task = await claim(sqlite_store, kind="generate", model="5b", params=params)
    stopping = Recorder(stop_after=20)  # about 34 reports in all: stops while upsampling
    with pytest.raises(JobInterrupted):
        run(runner, task, stopping)
    assert stopping.checkpoints  # some windows were kept
    resumed = run(runner, JobTask(task.job, stopping.checkpoints[-1]))
    for level in ("codes_level_0", "codes_level_1", "codes_level_2"):
        assert getattr(resumed[0], level) == getattr(unbroken[0], level)


class StopWhileDecoding(Recorder):
    """Asks the run to stop (a shutdown) once it reports decoding, every window stored."""

    def should_stop(self) -> StopReason | None:
        decoding = any(report[0] == str(Stage.DECODING) for report in self.reports)
        return StopReason.SHUTDOWN if decoding else None


async def test_a_stop_while_decoding_interrupts_the_run_and_the_resume_only_decodes(
    runner: CascadeRunner, sqlite_store: JobStore
) -> None:
    """The decode and encode of every sample (minutes on a CPU) never asked whether to stop: a worker
    stopping then outlived its shutdown time, was killed, and its job counted an attempt (review)."""
    params = PREVIEW.model_copy(update={"n_samples": 2})
    unbroken = run(runner, await claim(sqlite_store, kind="generate", model="5b", params=params))
    task = await claim(sqlite_store, kind="generate", model="5b", params=params)
    stopping = StopWhileDecoding()
    with pytest.raises(JobInterrupted):
        run(runner, task, stopping)
    resumed = Recorder()
    samples = run(runner, JobTask(task.job, stopping.checkpoints[-1]), resumed)
    assert [sample.codes_level_2 for sample in samples] == [sample.codes_level_2 for sample in unbroken]
    assert not [report for report in resumed.reports if report[0] == str(Stage.SAMPLING)]  # only decodes


async def test_levels_sampled_at_once_give_the_same_samples_and_report_each_level(
    runner: CascadeRunner, model_dir: Path, sqlite_store: JobStore
) -> None:
    params = PREVIEW.model_copy(update={"levels": "all", "n_samples": 1})
    in_turn = run(runner, await claim(sqlite_store, kind="generate", model="5b", params=params))
    overlapping = CascadeRunner(DeviceSpec.cpu(), model_dir, overlap_levels=True)
    recorder = Recorder()
    at_once = run(
        overlapping, await claim(sqlite_store, kind="generate", model="5b", params=params), recorder
    )
    for level in ("codes_level_0", "codes_level_1", "codes_level_2"):
        assert getattr(at_once[0], level) == getattr(in_turn[0], level)
    sampling = [
        (report, levels) for report, levels in zip(recorder.reports, recorder.levels, strict=True) if levels
    ]
    assert all([p.level for p in levels] == [2, 1, 0] for _, levels in sampling)
    # the job's tokens are every level's, and only grow
    assert all(report[3] == sum(p.tokens_done for p in levels) for report, levels in sampling)
    done = [report[3] for report, _ in sampling]
    assert done == sorted(done) and done[-1] == sampling[-1][0][4]
    stages = [str(report[0]) for report, _ in sampling]
    assert stages == sorted(stages)  # "sampling" while the top level is, then "upsampling"
    assert stages[0] == "sampling" and stages[-1] == "upsampling"


async def test_cancel_and_missing_models(
    runner: CascadeRunner, sqlite_store: JobStore, tmp_path: Path
) -> None:
    task = await claim(sqlite_store, kind="generate", model="5b", params=PREVIEW)
    with pytest.raises(JobCancelled):
        run(runner, task, Recorder(stop_after=3, reason=StopReason.CANCEL))
    empty = CascadeRunner(DeviceSpec.cpu(), tmp_path / "no-models")
    assert empty.models == frozenset() and runner.models == {"1b_lyrics", "5b"}
    # a job it got anyway (files removed after the claim) goes back to the queue; the log says why
    with pytest.raises(ModelNotHere, match=r"Run `jukebot models download 5b` to fetch them"):
        run(empty, task)


@pytest.mark.parametrize(
    ("damage", "why", "served"),
    [
        # used to be "IndexError: pop from empty list"; the VQ-VAE is every model's
        ("text_vqvae", "it is not a PyTorch checkpoint", set()),
        ("truncated_prior", "the file is truncated", {"5b"}),  # used to crash the job on every attempt
    ],
)
async def test_a_damaged_model_file_gives_the_job_back_and_the_worker_stops_serving_the_model(
    model_dir: Path,
    sqlite_store: JobStore,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    damage: str,
    why: str,
    served: set[str],
) -> None:
    damaged = tmp_path / "models"
    shutil.copytree(model_dir, damaged)
    if damage == "text_vqvae":
        model_path(damaged, "vqvae").write_text("<html>404 Not Found</html>\n" * 20)
    else:
        top = model_path(damaged, MODELS["1b_lyrics"].priors[2])
        top.write_bytes(top.read_bytes()[: top.stat().st_size // 2])
    job_id = await sqlite_store.enqueue(
        kind="generate", model="1b_lyrics", params=PREVIEW.to_json(), channel_id=1, user_id=2, max_attempts=3
    )
    worker = Worker(sqlite_store, CascadeRunner(DeviceSpec.cpu(), damaged), DeviceSpec.cpu())
    try:
        claimed = await sqlite_store.claim(worker.worker_id, worker.runner.models, 60)
        assert claimed is not None
        with caplog.at_level(logging.WARNING):
            assert await worker.run_job(claimed) is JobOutcome.RELEASED
        # not this worker's any more (a worker with a good copy takes it); it would read the file again
        assert worker.runner.models == served
    finally:
        worker.close()
    job = await sqlite_store.get_job(job_id)
    assert job.status is JobStatus.QUEUED and job.attempts == 0 and job.error is None
    # what the operator should do, in the log
    assert why in caplog.text
    assert "Run `jukebot models verify 1b_lyrics`" in caplog.text
    assert "`jukebot models download 1b_lyrics`" in caplog.text


async def test_a_style_sweep_samples_each_row_with_its_own_style(
    runner: CascadeRunner, sqlite_store: JobStore
) -> None:
    ella = Style(artist="ella fitzgerald", genres=("jazz",), lyrics="A-tisket, a-tasket")
    alan = Style(artist="alan jackson", genres=("country",))  # the job's lyrics
    sweep = PREVIEW.model_copy(update={"styles": (ella, alan)})
    task = await claim(sqlite_store, kind="generate", model="1b_lyrics", params=sweep)
    request = runner.plan(task, runner.cascade("1b_lyrics"))
    assert request.styles == (
        SampleStyle("ella fitzgerald", "jazz", "A-tisket, a-tasket"),
        SampleStyle("alan jackson", "country", "Chattahoochee"),
    )
    swept = run(runner, task)
    # Row i of the sweep is what a job of style i alone makes in row i: same seed, same draws.
    for index, style in enumerate((ella, alan)):
        alone = PREVIEW.model_copy(
            update={"artist": style.artist, "genres": style.genres, "lyrics": sweep.style_of(index).lyrics}
        )
        single = run(runner, await claim(sqlite_store, kind="generate", model="1b_lyrics", params=alone))
        assert single[index].codes_level_2 == swept[index].codes_level_2, style
    assert swept[0].codes_level_2 != swept[1].codes_level_2
