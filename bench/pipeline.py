"""Pipeline overhead: a job through the whole pipeline against the same request sampled directly.

Pipeline: jobs are queued in a SQLite database, then `python -m sampler.pool` starts one CPU
worker running the real runner (`sampler.cascade_runner:make_runner`), which claims them one after
another, checkpoints every window, writes progress, decodes, compresses and stores the samples.
Direct: the same requests (`CascadeRunner.plan`) handed to `Cascade.sample` and `Cascade.decode`
in this process, with no database, checkpoints or compression. Both use one torch thread and
tiny random-weight models (the published architecture scaled down; tests/tiny_model_dir.py).

Reported, with the overhead of the pipeline over direct:
  * per job including model load: the first job (worker-side claim to completion, the models
    loaded inside) against a direct cold run (load the cascade, sample, decode);
  * steady state: the time between completions of the following jobs (models loaded; the
    worker goes straight from one queued job to the next) against warm direct runs;
  * fixed costs apart: pool start to its worker serving (process spawn, imports).

    python3 bench/pipeline.py              # 0.25 s of audio, all three levels, 3 steady jobs (~2 min)
    python3 bench/pipeline.py --quick      # a few seconds: a smoke run for CI
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sampler.cascade_runner import CascadeRunner
from sampler.jukebox.registry import MODELS
from sampler.loading import write_sidecar
from sampler.models import model_path
from sampler.runner import DeviceSpec, JobTask
from storage import JobKind, JobStatus, JobStore, create_engine
from storage.migrate import upgrade_to_head
from storage.records import ClaimedJob, Job
from tests.sampler.jukebox.tiny_priors import TINY_PRIOR_HPARAMS
from tests.tiny_model_dir import TOP_KIND, write_tiny_model_dir

REPO = Path(__file__).resolve().parents[1]
RUNNER = "sampler.cascade_runner:make_runner"
TARGET_OVERHEAD = 0.05


@dataclasses.dataclass(frozen=True)
class Settings:
    model: str
    levels: str
    seconds: float
    n_samples: int
    steady_jobs: int

    def params(self, seed: int) -> dict[str, Any]:
        return {
            "artist": "the beatles",
            "genres": ["rock"],
            "lyrics": "hello, hello" if MODELS[self.model].has_lyrics else "",
            "seconds": self.seconds,
            "n_samples": self.n_samples,
            "levels": self.levels,
            "seed": seed,
        }


def write_models(model_dir: Path, model: str, seconds: float) -> None:
    """Tiny models; the top prior's timing range widened so songs longer than 0.1 s are allowed
    (max_duration only scales the timing signal: the weights are the same)."""
    write_tiny_model_dir(model_dir, models=(model,))
    kind = TOP_KIND[model]
    top = model_path(model_dir, MODELS[model].priors[2])
    write_sidecar(top, {**TINY_PRIOR_HPARAMS[kind], "max_duration": max(1.0, 2 * seconds)})


def as_claimed(job: Job) -> ClaimedJob:
    values = {field.name: getattr(job, field.name) for field in dataclasses.fields(Job)}
    return ClaimedJob(**values, checkpoint=None)


async def enqueue_jobs(url: str, settings: Settings, count: int) -> list[Job]:
    engine = create_engine(url)
    try:
        store = JobStore(engine)
        ids = [
            await store.enqueue(
                kind=JobKind.GENERATE, model=settings.model, params=settings.params(seed), channel_id=1, user_id=2
            )
            for seed in range(count)
        ]
        return [await store.get_job(job_id) for job_id in ids]
    finally:
        await engine.dispose()


async def wait_finished(url: str, ids: list[int], within: float) -> list[Job]:
    """Poll the database until every job has ended (bounded)."""
    engine = create_engine(url)
    try:
        store = JobStore(engine)
        deadline = time.monotonic() + within
        while True:
            jobs = [await store.get_job(job_id) for job_id in ids]
            if all(job.finished for job in jobs):
                return jobs
            if time.monotonic() > deadline:
                states = ", ".join(f"#{job.id} {job.status.value}" for job in jobs)
                raise TimeoutError(f"the pipeline did not finish within {within:g} s ({states})")
            await asyncio.sleep(0.02)
    finally:
        await engine.dispose()


def run_direct(model_dir: Path, jobs: list[Job]) -> tuple[float, list[float], int]:
    """Seconds for a cold run of the first job (load + sample + decode), then warm runs of the rest,
    and the number of windows one job samples (the pipeline checkpoints after each)."""
    runner = CascadeRunner(DeviceSpec.cpu(), model_dir)
    times = []
    windows = [0]

    def count_window(_state: object) -> None:
        windows[0] += 1

    for job in jobs:
        windows[0] = 0
        start = time.perf_counter()
        cascade = runner.cascade(job.model)  # loads on the first call only
        request = runner.plan(JobTask(as_claimed(job)), cascade)
        state = cascade.sample(request, cascade.initial_state(request), on_window=count_window)
        finest = min(request.levels)
        cascade.decode(state.codes[finest], finest)
        times.append(time.perf_counter() - start)
    return times[0], times[1:], windows[0]


def run_pipeline(url: str, model_dir: Path, jobs: list[Job], log_file: Path, within: float) -> dict[str, Any]:
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "JUKEBOT_MODEL_DIR": str(model_dir),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "sampler.pool", "--database-url", url, "--runner", RUNNER, "--devices", "cpu"]
    started = time.perf_counter()
    with open(log_file, "wb") as output:
        pool = subprocess.Popen(command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        serving_at = None
        while serving_at is None:  # bounded by `within`: the worker logs when it serves
            if "serving models" in log_file.read_text(errors="replace"):
                serving_at = time.perf_counter()
            elif pool.poll() is not None or time.perf_counter() - started > within:
                raise RuntimeError(f"the pool did not start:\n{log_file.read_text(errors='replace')}")
            else:
                time.sleep(0.01)
        finished = asyncio.run(wait_finished(url, [job.id for job in jobs], within))
    finally:
        pool.send_signal(signal.SIGTERM)
        pool.wait(120)
    failed = [job for job in finished if job.status is not JobStatus.SUCCEEDED]
    if failed:
        raise RuntimeError(f"job #{failed[0].id} {failed[0].status.value}: {failed[0].error}")
    ends = [job.finished_at for job in finished if job.finished_at is not None]
    first_start = finished[0].started_at
    assert first_start is not None and len(ends) == len(finished)
    return {
        "startup": serving_at - started,
        "first": (ends[0] - first_start).total_seconds(),
        "steady": [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(ends)],
    }


def overhead(direct: float, pipeline: float) -> str:
    return f"{(pipeline / direct - 1) * 100:+.1f} %"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="5b", choices=sorted(MODELS))
    parser.add_argument("--levels", default="all", choices=("top", "all"))
    parser.add_argument("--seconds", type=float, default=0.25, help="audio per job")
    parser.add_argument("--samples", type=int, default=1, help="samples per job")
    parser.add_argument("--steady-jobs", type=int, default=3, help="jobs after the first (models loaded)")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (CI)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.steady_jobs, args.levels = 2048 / 44100, 1, "top"
    settings = Settings(args.model, args.levels, args.seconds, args.samples, max(1, args.steady_jobs))
    torch.set_num_threads(1)  # the workers get one thread too

    with tempfile.TemporaryDirectory(prefix="jukebot-bench-") as scratch:
        root = Path(scratch)
        model_dir = root / "models"
        write_models(model_dir, settings.model, settings.seconds)
        count = 1 + settings.steady_jobs
        direct_db = f"sqlite+aiosqlite:///{root / 'direct.sqlite3'}"
        pipeline_db = f"sqlite+aiosqlite:///{root / 'pipeline.sqlite3'}"
        upgrade_to_head(direct_db)
        upgrade_to_head(pipeline_db)

        direct_cold, direct_warm, windows = run_direct(model_dir, asyncio.run(enqueue_jobs(direct_db, settings, count)))
        jobs = asyncio.run(enqueue_jobs(pipeline_db, settings, count))  # queued before the pool starts
        within = 60 + 20 * (direct_cold + sum(direct_warm))
        pipe = run_pipeline(pipeline_db, model_dir, jobs, root / "pool.log", within)

    direct_steady = sum(direct_warm) / len(direct_warm)
    pipe_steady = sum(pipe["steady"]) / len(pipe["steady"])
    ratio = pipe_steady / direct_steady
    print(
        f"pipeline vs direct: model {settings.model} (tiny random weights), levels {settings.levels}, "
        f"{settings.seconds:.3f} s of audio x {settings.n_samples} sample(s), SQLite, CPU, 1 thread"
    )
    print(f"{'':32}{'direct':>10}{'pipeline':>11}{'overhead':>11}")
    print(
        f"{'per job including model load':32}{direct_cold:>9.2f}s{pipe['first']:>10.2f}s"
        f"{overhead(direct_cold, pipe['first']):>11}"
    )
    print(
        f"{f'steady state (mean of {len(direct_warm)})':32}{direct_steady:>9.2f}s{pipe_steady:>10.2f}s"
        f"{overhead(direct_steady, pipe_steady):>11}"
    )
    print(
        f"per window ({windows} a job, one checkpoint each): {(pipe_steady - direct_steady) / windows * 1000:+.1f} ms "
        "of pipeline time; real models take seconds to minutes a window"
    )
    print(f"fixed cost apart: pool start to worker serving {pipe['startup']:.2f} s (process spawn, imports)")
    verdict = "within" if ratio - 1 < TARGET_OVERHEAD else "above"
    print(f"overhead ratio (steady state): {ratio:.3f} ({verdict} the {TARGET_OVERHEAD:.0%} target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
