"""The real runner when its model files or its device let it down: a file deleted or damaged while the
worker serves the model, running out of memory while loading priors or decoding, damaged parent codes.

Real tiny model directories, real files, real store. Running out of memory cannot be provoked safely,
so it is raised by the allocating function (as CUDA or the CPU allocator raise it); everything else is
real.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import logging
import shutil
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sqlalchemy import text

from sampler import cascade_runner
from sampler.audio import SAMPLE_RATE, to_int16_pcm
from sampler.cascade_runner import CascadeRunner, codes_to_bytes
from sampler.jukebox.cascade import Cascade, CascadeState
from sampler.jukebox.registry import MODELS
from sampler.loading import LazyPriors, ModelDirectory
from sampler.model_files import ModelFilesMissing, VerifiedCache, model_path, model_status
from sampler.residency import ResidentPriors
from sampler.worker.contract import DeviceSpec, JobFailed, ModelNotHere
from sampler.worker.memory import is_out_of_memory
from sampler.worker.runtime import JobOutcome, Worker
from storage import JobStatus
from storage.records import NewSample
from storage.store import JobStore
from tests.sampler.jukebox.conftest import tiny_audio
from tests.sampler.test_cascade_runner import PREVIEW, claim, model_dir, run, runner
from tests.sampler.test_resident_priors import loads

__all__ = ["loads", "model_dir", "runner"]

CPU = DeviceSpec.cpu()
FULL = PREVIEW.model_copy(update={"levels": "all", "n_samples": 1})  # levels 0, 1 and 2
TOP = MODELS["1b_lyrics"].priors[2]  # prior_1b_lyrics: of 1b_lyrics only

CUDA_OOM = "CUDA out of memory. Tried to allocate 1.90 GiB (GPU 0; 15.7 GiB total capacity)"
# what torch 2.13's CPU allocator raises (a RuntimeError, not a MemoryError)
CPU_OOM = (
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
    "to allocate 1992294400 bytes. Error code 12 (Cannot allocate memory)"
)
OUT_OF_MEMORY: dict[str, Callable[[], Exception]] = {
    "cuda": lambda: torch.OutOfMemoryError(CUDA_OOM),
    "cpu": lambda: RuntimeError(CPU_OOM),
}


def cpu_runner(models: Path, resident: ResidentPriors = "auto", **options: Any) -> CascadeRunner:
    torch.set_num_threads(1)
    return CascadeRunner(CPU, models, resident_priors=resident, **options)


@pytest.fixture
def models(model_dir: Path, tmp_path: Path) -> Path:
    """A model directory of this test's own, to damage."""
    return Path(shutil.copytree(model_dir, tmp_path / "models"))


def one_prior_fits(monkeypatch: pytest.MonkeyPatch, error: Callable[[], Exception]) -> None:
    """A device that holds one prior but not two: loading a prior while another one is still alive
    (anywhere: the runner, a traceback) runs out of memory."""
    alive: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()
    load = ModelDirectory.load_prior  # the counting loader when `loads` is used

    def short_of_memory(self: ModelDirectory, level: int, *args: Any, **kwargs: Any) -> Any:
        if len(alive):
            raise error()
        prior = load(self, level, *args, **kwargs)
        alive.add(prior)
        return prior

    monkeypatch.setattr(ModelDirectory, "load_prior", short_of_memory)


async def enqueue(store: JobStore, model: str = "1b_lyrics", **job: Any) -> int:
    params = job.pop("params", PREVIEW)
    if model != "1b_lyrics":
        params = params.model_copy(update={"lyrics": ""})
    return await store.enqueue(
        kind=job.pop("kind", "generate"),
        model=model,
        params=params.to_json(),
        channel_id=1,
        user_id=2,
        max_attempts=3,
        **job,
    )


@pytest.fixture
def pcm(monkeypatch: pytest.MonkeyPatch) -> list[np.ndarray]:
    """The audio of every sample, as the runner hands it to the encoder (whose Ogg stream serial is
    random, so the encoded bytes differ from run to run)."""
    seen: list[np.ndarray] = []
    encode = cascade_runner.encode_audio

    def recorded(audio: np.ndarray, *args: Any, **kwargs: Any) -> bytes:
        seen.append(audio.copy())
        return encode(audio, *args, **kwargs)

    monkeypatch.setattr(cascade_runner, "encode_audio", recorded)
    return seen


def same_audio(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.fixture
def worker_of(sqlite_store: JobStore) -> Iterator[Callable[[CascadeRunner], Worker]]:
    workers: list[Worker] = []

    def make(runner: CascadeRunner) -> Worker:
        workers.append(Worker(sqlite_store, runner, CPU))
        return workers[-1]

    yield make
    for worker in workers:
        worker.close()


# ----------------------------------------------------------------------------- A: a file deleted


async def test_a_prior_deleted_after_the_claim_gives_the_job_back_and_tells_only_the_operator(
    models: Path,
    sqlite_store: JobStore,
    worker_of: Callable[[CascadeRunner], Worker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner = cpu_runner(models, "off")  # priors load per level, as on a GPU too small to keep them
    runner.cascade("1b_lyrics")  # cached by an earlier job
    worker = worker_of(runner)
    job_id = await enqueue(sqlite_store)
    claimed = await sqlite_store.claim(worker.worker_id, runner.models, 60)
    assert claimed is not None
    model_path(models, TOP).unlink()  # the operator moves it away now
    with caplog.at_level(logging.WARNING):
        assert await worker.run_job(claimed) is JobOutcome.RELEASED
    job = await sqlite_store.get_job(job_id)
    # back in the queue for a worker that has the model; the user sees nothing
    assert job.status is JobStatus.QUEUED and job.attempts == 0 and job.error is None
    assert "Run `jukebot models download 1b_lyrics` to fetch them" in caplog.text
    assert runner.models == {"5b"}


def test_a_file_gone_while_a_prior_loads_is_missing_not_damaged(models: Path) -> None:
    directory = ModelDirectory(models, "1b_lyrics")  # every file there
    model_path(models, TOP).unlink()
    with pytest.raises(ModelFilesMissing, match=r"prior_1b_lyrics .* missing"):
        directory.load_prior(2)


# ----------------------------------------------------------------------------- B: a file damaged


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


async def test_a_damaged_prior_gives_its_jobs_back_and_the_worker_stops_serving_the_model(
    model_dir: Path,
    models: Path,
    sqlite_store: JobStore,
    worker_of: Callable[[CascadeRunner], Worker],
    caplog: pytest.LogCaptureFixture,
) -> None:
    runner = cpu_runner(models)
    worker = worker_of(runner)
    truncate(model_path(models, TOP))
    ids = [await enqueue(sqlite_store) for _ in range(3)]
    outcomes = []
    with caplog.at_level(logging.INFO):
        for _ in ids:
            claimed = await sqlite_store.claim(worker.worker_id, await worker.advertise(), 60)
            if claimed is None:
                break
            outcomes.append(await worker.run_job(claimed))
    assert outcomes == [JobOutcome.RELEASED]  # the first job read the file; no other was claimed
    for job_id in ids:
        job = await sqlite_store.get_job(job_id)
        assert job.status is JobStatus.QUEUED and job.attempts == 0 and job.error is None
    assert await worker.advertise() == {"5b"}
    # the verdict is recorded where `jukebot models list` and every worker on this directory read it
    assert cpu_runner(models).models == {"5b"}
    assert model_status(models)["1b_lyrics"].summary.endswith("jukebot models verify 1b_lyrics")
    # the fix, once, in the log (not on the job)
    assert caplog.text.count("Run `jukebot models verify 1b_lyrics` (it moves the damaged file aside)") == 1
    assert "the file is truncated" in caplog.text
    # a good copy again: served again
    shutil.copyfile(model_path(model_dir, TOP), model_path(models, TOP))
    assert await worker.advertise() == {"1b_lyrics", "5b"}


async def test_a_prior_a_worker_found_not_numbers_in_is_moved_aside_by_verify_not_passed(
    model_dir: Path, models: Path, sqlite_store: JobStore
) -> None:
    """The worker's log says to run `jukebot models verify`, which reads keys and shapes only: its
    pass must not replace the worker's verdict, or the model is served again, damaged, and the
    operator's `download` finds the file 'already present'."""
    from sampler.jukebox.checkpoint import save_checkpoint
    from sampler.loading import expected_shapes_for
    from sampler.model_files import CheckpointVerifier, verify_file
    from tests.sampler.jukebox.tiny_priors import tiny_prior

    state = tiny_prior("top_1b_lyrics", seed=9).state_dict()
    first = next(key for key, value in state.items() if value.is_floating_point())
    save_checkpoint({**state, first: torch.full_like(state[first], float("nan"))}, model_path(models, TOP))
    runner = cpu_runner(models)
    with pytest.raises(ModelNotHere, match="holds weights that are not numbers"):
        run(runner, await claim(sqlite_store, kind="generate", model="1b_lyrics", params=PREVIEW))
    verifier = CheckpointVerifier(expected_shapes_for=lambda name: expected_shapes_for(name, models))
    result = verify_file(TOP, models, verifier)
    top = model_path(models, TOP)
    assert not result.ok and result.moved_to == top.with_name(top.name + ".corrupt")
    assert "not numbers" in result.message
    shutil.copyfile(model_path(model_dir, TOP), model_path(models, TOP))  # fetched again
    assert verify_file(TOP, models, verifier).ok and cpu_runner(models).models == {"1b_lyrics", "5b"}


def test_a_prior_that_overflows_float16_is_not_damaged_and_verify_may_clear_it(models: Path) -> None:
    """Its weights are numbers in the file, only too large for float16: float32 loads them."""
    from sampler.jukebox.checkpoint import save_checkpoint
    from sampler.loading import ModelFileUnusable, expected_shapes_for, record_unusable
    from sampler.model_files import CheckpointVerifier, verify_file
    from tests.sampler.jukebox.tiny_priors import tiny_prior

    state = tiny_prior("top_1b_lyrics", seed=9).state_dict()
    save_checkpoint(
        {k: torch.full_like(v, 1e6) if v.is_floating_point() else v for k, v in state.items()},
        model_path(models, TOP),
    )
    with pytest.raises(ModelFileUnusable, match=r"too large for torch\.float16") as raised:
        ModelDirectory(models, "1b_lyrics").load_prior(2, dtype=torch.float16)
    record_unusable(models, raised.value)
    assert model_status(models)["1b_lyrics"].summary.endswith("jukebot models verify 1b_lyrics")
    verifier = CheckpointVerifier(expected_shapes_for=lambda name: expected_shapes_for(name, models))
    assert verify_file(TOP, models, verifier).ok and model_path(models, TOP).is_file()
    ModelDirectory(models, "1b_lyrics").load_prior(2, dtype=torch.float32)  # as the file is


async def test_a_damaged_file_is_remembered_where_the_model_directory_cannot_be_written(
    models: Path, sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(VerifiedCache, "put", disk_full)
    runner = cpu_runner(models)
    truncate(model_path(models, "vqvae"))  # every model's
    with pytest.raises(ModelNotHere, match="remembered until the worker restarts") as raised:
        run(runner, await claim(sqlite_store, kind="generate", model="5b", params=PREVIEW))
    from sampler.loading import ModelFileUnusable

    assert isinstance(raised.value.__cause__, ModelFileUnusable)
    assert "re-download it with" not in str(raised.value)  # the advice once, the runner's own
    assert runner.models == frozenset()


# ----------------------------------------------------------------------------- D: priors do not fit


@pytest.mark.parametrize("kind", ["cuda", "cpu"])
async def test_priors_that_do_not_fit_together_in_a_job_load_per_level_and_the_job_goes_on(
    model_dir: Path,
    sqlite_store: JobStore,
    loads: list[tuple[str, int]],
    pcm: list[np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    reference = run(
        cpu_runner(model_dir, "off"),
        await claim(sqlite_store, kind="generate", model="1b_lyrics", params=FULL),
    )
    reference_pcm = pcm[:]
    pcm.clear()
    loads.clear()
    one_prior_fits(monkeypatch, OUT_OF_MEMORY[kind])
    runner = cpu_runner(model_dir, "on")
    samples = run(runner, await claim(sqlite_store, kind="generate", model="1b_lyrics", params=FULL))
    assert runner.keeps_priors("1b_lyrics") is False
    # the top level sampled with its prior resident; level 1's did not fit beside it (not counted: it
    # failed before reading): the job went on from the top level's codes, one prior at a time
    assert loads == [("1b_lyrics", 2), ("1b_lyrics", 1), ("1b_lyrics", 0)]  # the top level's once
    assert [s.codes_level_0 for s in samples] == [s.codes_level_0 for s in reference]
    assert same_audio(pcm, reference_pcm)
    loads.clear()
    run(runner, await claim(sqlite_store, kind="generate", model="1b_lyrics", params=FULL))  # the next job
    assert loads == [("1b_lyrics", 2), ("1b_lyrics", 1), ("1b_lyrics", 0)]


async def test_priors_that_ran_out_of_memory_together_are_kept_again_once_memory_is_free(
    model_dir: Path,
    sqlite_store: JobStore,
    loads: list[tuple[str, int]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One out of memory (another process on the GPU for a while) made every later job read each prior
    from disk again, for as long as the worker ran. The worker decides again after a while (here at
    once), measuring the memory free then."""
    monkeypatch.setattr(cascade_runner, "PER_LEVEL_AFTER_OOM_S", 0.0)
    plenty = ModelDirectory.load_prior  # the counting loader
    one_prior_fits(monkeypatch, OUT_OF_MEMORY["cuda"])
    caplog.set_level(logging.WARNING, logger=cascade_runner.__name__)
    runner = cpu_runner(model_dir, "on")
    run(runner, await claim(sqlite_store, kind="generate", model="1b_lyrics", params=FULL))
    assert runner.keeps_priors("1b_lyrics") is False
    assert any("they load per level for the next 0 minutes" in r.getMessage() for r in caplog.records)
    monkeypatch.setattr(ModelDirectory, "load_prior", plenty)  # the other process let go
    loads.clear()
    run(runner, await claim(sqlite_store, kind="generate", model="1b_lyrics", params=FULL))
    run(runner, await claim(sqlite_store, kind="generate", model="1b_lyrics", params=FULL))
    assert runner.keeps_priors("1b_lyrics") is True
    assert loads == [("1b_lyrics", 2), ("1b_lyrics", 1), ("1b_lyrics", 0)]  # once for both jobs


def test_warm_up_loads_per_level_after_the_cpu_allocator_fails(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    one_prior_fits(monkeypatch, OUT_OF_MEMORY["cpu"])
    runner = cpu_runner(model_dir, "on")
    with pytest.raises(RuntimeError, match="can't allocate memory"):
        runner.warm_up()
    assert runner.keeps_priors("1b_lyrics") is False


def test_out_of_memory_is_told_apart_from_other_errors() -> None:
    with pytest.raises(RuntimeError) as cpu:
        torch.empty(2**50, dtype=torch.uint8)  # a real failure of the CPU allocator: 1 PiB
    assert is_out_of_memory(cpu.value)
    assert is_out_of_memory(torch.OutOfMemoryError(CUDA_OOM)) and is_out_of_memory(RuntimeError(CPU_OOM))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory")) and is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"))
    assert is_out_of_memory(OSError(errno.ENOMEM, "Cannot allocate memory"))
    assert not is_out_of_memory(OSError(errno.ENOSPC, "No space left on device"))


# ----------------------------------------------------------------------------- M: the final decode


def test_decoding_one_sample_at_a_time_gives_each_sample_the_audio_of_a_batch(model_dir: Path) -> None:
    runner = cpu_runner(model_dir)
    cascade = runner.cascade("5b")
    generator = torch.Generator().manual_seed(1)
    for level in range(3):
        codes = torch.randint(
            0, cascade.vqvae.config.l_bins, (3, 4096 // cascade.hops[level]), generator=generator
        )
        batch = cascade.decode(codes, level).numpy()
        audio = runner.decode_audio(cascade, codes, level)
        assert audio.shape == batch.shape == (3, 4096) and audio.dtype == np.float32
        # the audio of one batch, to float rounding (a batch's convolutions add up in another order):
        # about 2e-5 here, under one int16 step (3e-5); the bound leaves room for other CPUs' kernels
        np.testing.assert_allclose(audio, batch, rtol=0, atol=1e-4)
        # and exactly the same whatever the other samples: each is decoded on its own
        assert np.array_equal(audio[1:2], runner.decode_audio(cascade, codes[1:2], level))


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, tuple[int, ...]]]:
    """(batch, loaded priors) of every decode, in order; `fail(...)` makes some run out of memory."""
    seen: list[tuple[int, tuple[int, ...]]] = []
    decode = Cascade.decode

    def recorded(self: Cascade, codes: torch.Tensor, level: int) -> torch.Tensor:
        assert isinstance(self.priors, LazyPriors)
        seen.append((codes.shape[0], self.priors.loaded))
        if FAIL and FAIL[0](codes.shape[0], self.priors.loaded):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3.20 GiB")
        return decode(self, codes, level)

    FAIL.clear()
    monkeypatch.setattr(Cascade, "decode", recorded)
    return seen


FAIL: list[Callable[[int, tuple[int, ...]], bool]] = []


async def test_out_of_memory_in_the_final_decode_frees_the_priors_and_the_job_succeeds(
    model_dir: Path,
    sqlite_store: JobStore,
    decodes: list[tuple[int, tuple[int, ...]]],
    pcm: list[np.ndarray],
) -> None:
    both = PREVIEW.model_copy(update={"levels": "all"})  # 2 samples
    reference = run(
        cpu_runner(model_dir), await claim(sqlite_store, kind="generate", model="5b", params=both)
    )
    reference_pcm = pcm[:]
    pcm.clear()
    assert decodes == [(1, (0, 1, 2)), (1, (0, 1, 2))]  # one sample at a time, the priors resident
    decodes.clear()
    FAIL.append(lambda batch, loaded: bool(loaded))  # no room beside the priors
    runner = cpu_runner(model_dir)
    samples = run(runner, await claim(sqlite_store, kind="generate", model="5b", params=both))
    assert decodes == [(1, (0, 1, 2)), (1, ()), (1, ())]
    assert [s.codes_level_0 for s in samples] == [s.codes_level_0 for s in reference]
    assert same_audio(pcm, reference_pcm)
    assert runner.keeps_priors("5b")  # the next job loads them again, and keeps them


async def test_a_decode_that_never_fits_retries_the_job_which_then_only_decodes(
    model_dir: Path,
    sqlite_store: JobStore,
    worker_of: Callable[[CascadeRunner], Worker],
    decodes: list[tuple[int, tuple[int, ...]]],
    loads: list[tuple[str, int]],
) -> None:
    runner = cpu_runner(model_dir)
    worker = worker_of(runner)
    job_id = await enqueue(sqlite_store, "5b", params=FULL)
    claimed = await sqlite_store.claim(worker.worker_id, runner.models, 60)
    assert claimed is not None
    FAIL.append(lambda batch, loaded: True)
    assert await worker.run_job(claimed) is JobOutcome.RETRYING
    job = await sqlite_store.get_job(job_id)
    assert job.status is JobStatus.QUEUED and job.attempts == 1  # a retry, counted: not failed at once
    checkpoint = await sqlite_store.get_checkpoint(job_id)
    assert checkpoint is not None
    assert CascadeState.from_bytes(checkpoint).windows_done == {2: 9, 1: 7, 0: 15}  # all sampled
    FAIL.clear()
    loads.clear()
    claimed = await sqlite_store.claim(worker.worker_id, runner.models, 60)
    assert claimed is not None and claimed.id == job_id
    assert await worker.run_job(claimed) is JobOutcome.SUCCEEDED
    assert loads == []  # no prior loaded: the retry only decoded


def test_decode_did_not_fit_does_not_read_as_out_of_memory() -> None:
    """The runtime fails a job that ran out of memory at once; this one it must retry."""
    from sampler.cascade_runner import DecodeDidNotFit

    assert not is_out_of_memory(DecodeDidNotFit("the audio did not fit on cuda:0 to decode"))


# ----------------------------------------------------------------------------- E: damaged parent codes


async def test_damaged_parent_codes_fail_the_job_once_with_a_sentence(
    model_dir: Path, sqlite_store: JobStore, worker_of: Callable[[CascadeRunner], Worker]
) -> None:
    parent_job = await enqueue(sqlite_store)
    claimed = await sqlite_store.claim("maker", {"1b_lyrics"}, 60)
    assert claimed is not None and claimed.id == parent_job
    top = codes_to_bytes(torch.zeros(128, dtype=torch.int64))
    [sample_id] = await sqlite_store.complete(
        parent_job,
        "maker",
        [
            NewSample(
                index=0, seed=5, duration_seconds=0.05, audio=b"ogg", audio_format="ogg", codes_level_2=top
            )
        ],
    )
    async with sqlite_store.engine.begin() as connection:  # a hand edit or a partial restore
        await connection.execute(
            text(
                "update samples set codes_level_2 = substr(codes_level_2, 1, length(codes_level_2) - 1) where id = :s"
            ),
            {"s": sample_id},
        )
    more = PREVIEW.model_copy(update={"n_samples": 1, "seconds": 512 / 44100})
    job_id = await enqueue(sqlite_store, kind="continue", params=more, parent_sample_id=sample_id)
    worker = worker_of(cpu_runner(model_dir))
    claimed = await sqlite_store.claim(worker.worker_id, {"1b_lyrics"}, 60)
    assert claimed is not None and claimed.id == job_id
    assert await worker.run_job(claimed) is JobOutcome.FAILED
    job = await sqlite_store.get_job(job_id)
    assert job.attempts == 0
    assert job.error == (
        f"The saved codes of sample {sample_id} are damaged, so it cannot be used to continue: "
        "pick another sample."
    )


def _saved_state(**fields: object) -> bytes:
    buffer = io.BytesIO()
    torch.save({"format": 1, **fields}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("rng_state missing", "incomplete (KeyError: 'rng_state')"),
        ("codes as lists", "the saved sampling state's level-0 codes are a list, not a tensor"),
        ("windows done past the plan", "it counts 99 windows done at level 2, more than there are"),
        ("codes longer than the song", "its level-2 codes are longer than the song"),
        ("another batch", "its level-0 codes have shape (2, 0), not (1, tokens)"),
    ],
)
async def test_a_saved_state_that_cannot_be_this_jobs_is_set_aside_and_the_job_starts_over(
    runner: CascadeRunner,
    sqlite_store: JobStore,
    damage: str,
    reason: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A state of the right format number but damaged, or written by a version that planned windows
    otherwise, crashed the run (KeyError, AttributeError, ValueError…) at every attempt, each after
    loading the model; the job failed only when all were spent, saying "KeyError: 'rng_state'". Then it
    failed at once, with torch's own words in the message, and `jobs retry` failed again on the same
    state. Each window's draws are seeded, so the job now starts over and makes the codes an unbroken
    run makes."""
    params = PREVIEW.model_copy(update={"n_samples": 1})
    task = await claim(sqlite_store, kind="generate", model="1b_lyrics", params=params)
    unbroken = run(runner, task)
    empty = [torch.zeros(1, 0, dtype=torch.long) for _ in range(3)]
    states = {
        "rng_state missing": _saved_state(codes=empty, level_base={}, windows_done={}),
        "codes as lists": _saved_state(codes=[[], [], []], level_base={}, windows_done={}, rng_state=None),
        "windows done past the plan": CascadeState(empty, {}, {2: 99}, None).to_bytes(),
        "codes longer than the song": CascadeState(
            [*empty[:2], torch.zeros(1, 5000, dtype=torch.long)], {}, {}, None
        ).to_bytes(),
        "another batch": CascadeState([torch.zeros(2, 0, dtype=torch.long)] * 3, {}, {}, None).to_bytes(),
    }
    damaged = dataclasses.replace(task, checkpoint=states[damage])
    caplog.set_level(logging.WARNING, logger=cascade_runner.__name__)
    started_over = run(runner, damaged)
    assert [sample.codes_level_2 for sample in started_over] == [sample.codes_level_2 for sample in unbroken]
    (warning,) = [
        r.getMessage()
        for r in caplog.records
        if r.name == cascade_runner.__name__ and r.levelno >= logging.WARNING
    ]
    assert (
        warning.startswith(f"job #{task.job.id}: its saved progress cannot be used (") and reason in warning
    )
    assert warning.endswith("; starting it over")


async def test_a_clip_whose_saved_audio_lost_a_byte_fails_the_job_saying_so(
    runner: CascadeRunner, sqlite_store: JobStore
) -> None:
    clip = to_int16_pcm(tiny_audio(batch=1, samples=1024)[0].numpy()).tobytes()
    prime_id = await sqlite_store.store_prime(user_id=2, filename="c.wav", pcm=clip, sample_rate=SAMPLE_RATE)
    async with sqlite_store.engine.begin() as connection:  # a hand edit, a partial restore
        await connection.execute(
            text("UPDATE primes SET pcm = :pcm WHERE id = :id"), {"pcm": clip[:-1], "id": prime_id}
        )
    params = PREVIEW.model_copy(update={"n_samples": 1})
    task = await claim(sqlite_store, kind="generate", model="1b_lyrics", params=params, prime_id=prime_id)
    task = dataclasses.replace(task, prime=await sqlite_store.get_prime(prime_id))
    with pytest.raises(JobFailed, match=rf"The saved audio of clip #{prime_id} is damaged \(an odd number"):
        run(runner, task)
