"""End-to-end fixtures: tiny random-weight models sampled by real worker processes.

`services` starts `python -m sampler.worker.pool` or `jukebot worker` processes running the real
`sampler.cascade_runner:make_runner` against a real database; each gets one torch thread
(`OMP_NUM_THREADS=1`) and its log is printed when the test ends. `reference_samples` runs the
same job in this process without any worker, for comparing codes with an uninterrupted run.
Waiting is always a bounded poll of the database (`wait_until`), never a bare sleep.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import pytest
import torch

from sampler.cascade_runner import CascadeRunner, codes_from_bytes
from sampler.jukebox.checkpoint import save_checkpoint
from sampler.jukebox.prior import JukeboxPrior, PriorConfig
from sampler.jukebox.registry import MODELS
from sampler.jukebox.vqvae import VQVAE, VQVAEConfig
from sampler.loading import write_sidecar
from sampler.model_files import model_path
from sampler.worker.contract import DeviceSpec, JobTask, StopReason
from storage import JobKind, JobStore, create_engine
from storage.records import ClaimedJob, Job, NewSample
from tests.holding import HOLD_DIR_VARIABLE
from tests.sampler.jukebox.conftest import TINY_VQVAE_HPARAMS, redraw_parameters, tiny_audio
from tests.sampler.jukebox.tiny_priors import TINY_PRIOR_HPARAMS
from tests.tiny_model_dir import TINY_SONG_SECONDS, TOP_KIND, write_tiny_model_dir
from tests.worker_processes import (
    CHANNEL,
    USER,
    ServiceProcess,
    job_finished,
    pool_command,
    repo_environment,
)

RUNNER = "sampler.cascade_runner:make_runner"
HELD_RUNNER = "tests.holding:held_cascade_runner"
SONG = TINY_SONG_SECONDS  # 2048 samples: 128 top tokens, two windows of the tiny top prior
MAX_BATCH_SIZE = "4"
T = TypeVar("T")


def worker_environment(model_dir: Path, **extra: str) -> dict[str, str]:
    """What `jukebot run|worker` hand their workers, plus one torch thread each (2 shared cores)."""
    return repo_environment(
        {
            "JUKEBOT_MODEL_DIR": str(model_dir),
            "JUKEBOT_MAX_BATCH_SIZE": MAX_BATCH_SIZE,
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            **extra,
        }
    )


class Services:
    """Starts worker processes for one test; stops them (and prints their logs) afterwards."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[ServiceProcess] = []

    def _log_file(self, kind: str) -> Path:
        return self.tmp_path / f"{kind}-{len(self.started)}.log"

    def pool(
        self, db_url: str, model_dir: Path, extra: list[str] | None = None, hold_dir: Path | None = None
    ) -> ServiceProcess:
        """A pool; with `hold_dir`, each run of a job holds after its first checkpoint until the test
        releases it (tests/holding.py)."""
        runner, env = RUNNER, worker_environment(model_dir)
        if hold_dir is not None:
            runner, env[HOLD_DIR_VARIABLE] = HELD_RUNNER, str(hold_dir)
        # The runner's settings travel in the worker's config, as `jukebot worker` passes them.
        options = [
            "--runner-option",
            f"model_dir={model_dir}",
            "--runner-option",
            f"max_batch_size={MAX_BATCH_SIZE}",
        ]
        command = pool_command(db_url, runner, [*options, *(extra or [])])
        service = ServiceProcess(command, env, self._log_file("pool"))
        self.started.append(service)
        return service

    def jukebot_worker(self, db_url: str, model_dir: Path) -> ServiceProcess:
        """`jukebot worker` exactly as a second GPU machine runs it (here on the CPU)."""
        env = worker_environment(model_dir, JUKEBOT_DATABASE_URL=db_url, JUKEBOT_GPUS="cpu")
        env.pop("DATABASE_URL", None)
        cwd = self.tmp_path / f"cwd-{len(self.started)}"  # no stray .env is read
        cwd.mkdir()
        service = ServiceProcess(
            [sys.executable, "-m", "jukebot", "worker"], env, self._log_file("jukebot-worker"), cwd
        )
        self.started.append(service)
        return service

    async def stop_all(self) -> None:
        for service in self.started:
            await service.stop()


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[Services]:
    started = Services(tmp_path)
    try:
        yield started
    finally:
        await started.stop_all()


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny random-weight 1b_lyrics and 5b (with the VQ-VAE and upsamplers) in a model directory."""
    return write_tiny_model_dir(tmp_path_factory.mktemp("tiny-models"), models=("1b_lyrics", "5b"))


@pytest.fixture
async def any_store(db_url: str) -> AsyncIterator[JobStore]:
    """A store on each database kind (SQLite and Postgres)."""
    engine = create_engine(db_url)
    yield JobStore(engine)
    await engine.dispose()


async def enqueue(
    store: JobStore, *, model: str = "5b", kind: JobKind = JobKind.GENERATE, **fields: Any
) -> int:
    """Queue a job as the bot would; `params` entries override the defaults of a tiny preview."""
    params: dict[str, Any] = {"artist": "the beatles", "genres": ["rock"], "seconds": SONG, "seed": 11}
    if model != "5b":
        params["lyrics"] = "hello, hello"
    params.update(fields.pop("params", {}))
    return await store.enqueue(
        kind=kind, model=model, params=params, channel_id=CHANNEL, user_id=USER, **fields
    )


finished = job_finished


def as_claimed(job: Job, checkpoint: bytes | None = None) -> ClaimedJob:
    values = {field.name: getattr(job, field.name) for field in dataclasses.fields(Job)}
    return ClaimedJob(**values, checkpoint=checkpoint)


class _Recorder:
    """A ProgressReporter that counts checkpoints (one per sampled window)."""

    def __init__(self) -> None:
        self.checkpoints = 0

    def progress(self, *args: Any, **kwargs: Any) -> None:
        pass

    def checkpoint(self, blob: object) -> None:
        self.checkpoints += 1


def _no_stop() -> StopReason | None:
    return None


@dataclasses.dataclass(frozen=True)
class Reference:
    """An uninterrupted in-process run of a job: its samples and how many windows it sampled."""

    samples: list[NewSample]
    windows: int


_runners: dict[Path, CascadeRunner] = {}


def _reference_run(model_dir: Path, task: JobTask) -> Reference:
    torch.set_num_threads(1)  # as in the workers: the same arithmetic, the same codes
    runner = _runners.setdefault(model_dir, CascadeRunner(DeviceSpec.cpu(), model_dir))
    recorder = _Recorder()
    samples = runner.run(task, recorder, _no_stop)
    return Reference(samples, recorder.checkpoints)


async def reference_run(store: JobStore, model_dir: Path, job_id: int) -> Reference:
    """Run job `job_id` here, from scratch and without a worker, as a reference."""
    job = await store.get_job(job_id)
    parent = None if job.parent_sample_id is None else await store.get_sample(job.parent_sample_id)
    prime = None if job.prime_id is None else await store.get_prime(job.prime_id)
    return await asyncio.to_thread(_reference_run, model_dir, JobTask(as_claimed(job), None, parent, prime))


def stored_codes(sample_codes: bytes | None) -> list[int] | None:
    codes = codes_from_bytes(sample_codes)
    return None if codes is None else codes.tolist()


async def assert_same_codes(store: JobStore, job_id: int, reference: Reference) -> None:
    """Every stored sample of the job holds the reference's codes, level by level."""
    infos = await store.samples_for_job(job_id)
    assert [info.index for info in infos] == [sample.index for sample in reference.samples]
    for info, expected in zip(infos, reference.samples, strict=True):
        sample = await store.get_sample(info.id)
        for level in range(3):
            want = getattr(expected, f"codes_level_{level}")
            assert stored_codes(sample.codes(level)) == stored_codes(want), f"level {level} differs"


def gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie not yet reaped counts)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


@pytest.fixture
def single_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def audio_is_playable(data: bytes, seconds: float) -> np.ndarray:
    from sampler.audio import decode_audio

    audio = decode_audio(data, silence_threshold_db=None)
    assert audio.ndim == 1 and abs(audio.size / 44_100 - seconds) < 0.03, (audio.shape, seconds)
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0
    return audio


# ----------------------------------------------------------------------------- songs the bot accepts

# The bot asks for at least 1 s; the tiny models' hops (4/8/16 samples) make that thousands of
# tokens per level. This variant keeps the tiny widths and depths but hops of 16/64/256 samples
# (downsampling 4x per level above the first, as published) and a 10 s timing range, so a 1 s
# song is 172 top tokens and upsampling it takes seconds.
COARSE_VQVAE_HPARAMS: dict[str, Any] = {**TINY_VQVAE_HPARAMS, "downs_t": (4, 2, 2)}
COARSE_MAX_DURATION = 10.0


def write_coarse_tiny_model_dir(
    model_dir: Path, models: tuple[str, ...] = ("1b_lyrics",), seed: int = 7
) -> Path:
    """Like `tests.tiny_model_dir.write_tiny_model_dir`, with coarser hops (see above)."""
    vqvae = VQVAE(VQVAEConfig.from_hparams(COARSE_VQVAE_HPARAMS)).eval()
    redraw_parameters(vqvae, seed)
    audio = tiny_audio(samples=4096, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    for level, codebook in enumerate(vqvae.bottleneck.level_blocks):
        # codebook rows near real encoder outputs, so decoded audio is not silence
        latents = vqvae.encode_latents(audio, level, chunk_samples=None)
        rows = latents.permute(0, 2, 1).reshape(-1, latents.shape[1])
        entries = cast(torch.Tensor, codebook.k)
        picks = torch.randint(rows.shape[0], (entries.shape[0],), generator=generator)
        entries.copy_(rows[picks] + torch.randn(entries.shape, generator=generator) * 0.01 * rows.std())
    vqvae_path = model_path(model_dir, "vqvae")
    save_checkpoint(vqvae, vqvae_path)
    write_sidecar(vqvae_path, COARSE_VQVAE_HPARAMS)
    for model in models:
        kinds = ("up0", "up1", TOP_KIND[model])
        for level, (name, kind) in enumerate(zip(MODELS[model].priors, kinds, strict=True)):
            hparams = dict(TINY_PRIOR_HPARAMS[kind])
            if level == 2:
                hparams["max_duration"] = COARSE_MAX_DURATION
            prior = JukeboxPrior(PriorConfig.from_hparams(hparams, COARSE_VQVAE_HPARAMS)).eval()
            redraw_parameters(prior, seed + level)
            path = model_path(model_dir, name)
            save_checkpoint(prior, path)
            write_sidecar(path, hparams)
    return model_dir
