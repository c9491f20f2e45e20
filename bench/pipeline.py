"""Pipeline overhead: jobs through the whole pipeline against the same requests sampled directly.

Pipeline: jobs are queued in a SQLite database, and `python -m sampler.worker.pool` runs one CPU worker
with the real runner (`sampler.cascade_runner:make_runner`), which claims them one after another,
checkpoints (at most once per `--checkpoint-seconds`), writes progress, decodes, compresses and
stores the samples. Direct: the same requests (`CascadeRunner.plan`) handed to `Cascade.sample`
and `Cascade.decode` in this process, with no database, checkpoints or compression. Both use one
torch thread and tiny random-weight models (the published architecture scaled down;
tests/tiny_model_dir.py).

Reported, with the overhead of the pipeline over direct:
  * per job including model load: the first job (worker-side claim to completion, the models
    loaded inside) against a direct cold run (load the cascade, sample, decode);
  * steady state: then direct and pipeline run one job each in turn (`--turns`), so a slow spell
    of a shared machine hits both alike; pipeline time is the worker's claim to completion. The
    headline ratio is the median of the turns' ratios;
  * apart: the gap between two queued jobs (one's end to the next one's claim) and pool start to
    its worker serving (process spawn, imports).

    python3 bench/pipeline.py                         # 0.25 s of audio, all levels, 8 turns (~4 min)
    python3 bench/pipeline.py --checkpoint-seconds 0  # a checkpoint stored after every window
    python3 bench/pipeline.py --quick                 # a few seconds: a smoke run for CI
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sampler.cascade_runner import CascadeRunner
from sampler.jukebox.registry import MODELS
from sampler.loading import write_sidecar
from sampler.model_files import model_path
from sampler.worker.contract import DeviceSpec, JobTask
from sampler.worker.runtime import WorkerConfig
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
                kind=JobKind.GENERATE,
                model=settings.model,
                params=settings.params(seed),
                channel_id=1,
                user_id=2,
            )
            for seed in range(count)
        ]
        return [await store.get_job(job_id) for job_id in ids]
    finally:
        await engine.dispose()


async def wait_finished(url: str, ids: list[int], within: float) -> list[Job]:
    """Wait until every job has ended (bounded). Jobs run in queue order, so this polls the last one,
    and slowly: the timings come from the jobs' own timestamps, and a busy poll would take CPU from
    the worker being measured."""
    engine = create_engine(url)
    try:
        store = JobStore(engine)
        deadline = time.monotonic() + within
        while True:
            last = await store.get_job(ids[-1])
            if last.finished:
                jobs = [await store.get_job(job_id) for job_id in ids]
                if all(job.finished for job in jobs):
                    return jobs
            if time.monotonic() > deadline:
                jobs = [await store.get_job(job_id) for job_id in ids]
                states = ", ".join(f"#{job.id} {job.status.value}" for job in jobs)
                raise TimeoutError(f"the pipeline did not finish within {within:g} s ({states})")
            await asyncio.sleep(0.5)
    finally:
        await engine.dispose()


class DirectRunner:
    """The same requests sampled in this process: plan, `Cascade.sample`, `Cascade.decode`."""

    def __init__(self, model_dir: Path) -> None:
        self.runner = CascadeRunner(DeviceSpec.cpu(), model_dir)
        self.windows = 0  # windows one job samples (the pipeline may checkpoint after each)

    def run(self, job: Job) -> float:
        """Seconds for one job; the first call loads the models inside its time."""
        windows = [0]

        def count_window(_state: object) -> None:
            windows[0] += 1

        start = time.perf_counter()
        cascade = self.runner.cascade(job.model)  # loads on the first call only
        request = self.runner.plan(JobTask(as_claimed(job)), cascade)
        state = cascade.sample(request, cascade.initial_state(request), on_window=count_window)
        finest = min(request.levels)
        cascade.decode(state.codes[finest], finest)
        self.windows = windows[0]
        return time.perf_counter() - start


@contextlib.contextmanager
def running_pool(url: str, model_dir: Path, log_file: Path, checkpoint_seconds: float) -> Iterator[float]:
    """`python -m sampler.worker.pool` with one CPU worker; yields the seconds from start to serving."""
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    command = [
        sys.executable,
        "-m",
        "sampler.worker.pool",
        "--database-url",
        url,
        "--runner",
        RUNNER,
        "--runner-option",
        f"model_dir={model_dir}",
        "--devices",
        "cpu",
        "--checkpoint-seconds",
        str(checkpoint_seconds),
        "--poll-seconds",
        "0.1",
        "--max-poll-seconds",
        "0.5",
    ]
    started = time.perf_counter()
    with open(log_file, "wb") as output:
        pool = subprocess.Popen(command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        while "serving models" not in log_file.read_text(errors="replace"):
            if pool.poll() is not None or time.perf_counter() - started > 300:
                raise RuntimeError(f"the pool did not start:\n{log_file.read_text(errors='replace')}")
            time.sleep(0.01)  # polling the log file for the worker's first line
        yield time.perf_counter() - started
    finally:
        pool.send_signal(signal.SIGTERM)
        pool.wait(120)


def run_in_pipeline(url: str, settings: Settings, count: int, within: float) -> list[Job]:
    """Queue `count` jobs for the running pool and return them once all have succeeded."""
    jobs = asyncio.run(enqueue_jobs(url, settings, count))
    finished = asyncio.run(wait_finished(url, [job.id for job in jobs], within))
    failed = [job for job in finished if job.status is not JobStatus.SUCCEEDED]
    if failed:
        raise RuntimeError(f"job #{failed[0].id} {failed[0].status.value}: {failed[0].error}")
    return finished


def seconds_between(earlier: datetime | None, later: datetime | None) -> float:
    assert earlier is not None and later is not None
    return (later - earlier).total_seconds()


def overhead(direct: float, pipeline: float) -> str:
    return f"{(pipeline / direct - 1) * 100:+.1f} %"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="5b", choices=sorted(MODELS))
    parser.add_argument("--levels", default="all", choices=("top", "all"))
    parser.add_argument("--seconds", type=float, default=0.25, help="audio per job")
    parser.add_argument("--samples", type=int, default=1, help="samples per job")
    parser.add_argument("--turns", type=int, default=8, help="steady-state jobs each side, taking turns")
    parser.add_argument(
        "--checkpoint-seconds",
        type=float,
        default=WorkerConfig().checkpoint_seconds,
        help="the workers' checkpoint interval (0: store one after every window)",
    )
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (CI)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every turn's times")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.turns, args.levels = 2048 / 44100, 2, "top"
    settings = Settings(args.model, args.levels, args.seconds, args.samples)
    torch.set_num_threads(1)  # the workers get one thread too

    with tempfile.TemporaryDirectory(prefix="jukebot-bench-") as scratch:
        root = Path(scratch)
        model_dir = root / "models"
        write_models(model_dir, settings.model, settings.seconds)
        direct_db = f"sqlite+aiosqlite:///{root / 'direct.sqlite3'}"
        pipeline_db = f"sqlite+aiosqlite:///{root / 'pipeline.sqlite3'}"
        upgrade_to_head(direct_db)
        upgrade_to_head(pipeline_db)

        direct = DirectRunner(model_dir)
        direct_cold = direct.run(asyncio.run(enqueue_jobs(direct_db, settings, 1))[0])
        within = 120 + 20 * direct_cold
        turns: list[tuple[float, float]] = []
        with running_pool(pipeline_db, model_dir, root / "pool.log", args.checkpoint_seconds) as startup:
            # Two jobs queued together: the first loads the models, the second follows at once.
            first, second = run_in_pipeline(pipeline_db, settings, 2, within)
            pipe_cold = seconds_between(first.started_at, first.finished_at)
            between_jobs = seconds_between(first.finished_at, second.started_at)
            # Then one job each in turn, so a slow spell of a shared machine hits both sides alike.
            for turn in range(args.turns):
                (job,) = asyncio.run(enqueue_jobs(direct_db, settings, 1))
                direct_s = direct.run(job)
                (done,) = run_in_pipeline(pipeline_db, settings, 1, within)
                turns.append((direct_s, seconds_between(done.started_at, done.finished_at)))
                if args.verbose:
                    print(
                        f"turn {turn + 1}: direct {turns[-1][0]:.2f} s, pipeline {turns[-1][1]:.2f} s",
                        flush=True,
                    )

    ratios = sorted(pipe / direct_s for direct_s, pipe in turns)
    ratio = statistics.median(ratios)
    direct_mean = statistics.mean(d for d, _ in turns)
    pipe_mean = statistics.mean(p for _, p in turns)
    print(
        f"pipeline vs direct: model {settings.model} (tiny random weights), levels {settings.levels}, "
        f"{settings.seconds:.3f} s of audio x {settings.n_samples} sample(s), SQLite, CPU, 1 thread, "
        f"checkpoints at most every {args.checkpoint_seconds:g} s"
    )
    print(f"{'':32}{'direct':>10}{'pipeline':>11}{'overhead':>11}")
    print(
        f"{'per job including model load':32}{direct_cold:>9.2f}s{pipe_cold:>10.2f}s"
        f"{overhead(direct_cold, pipe_cold):>11}"
    )
    print(
        f"{f'steady state (mean of {len(turns)})':32}{direct_mean:>9.2f}s{pipe_mean:>10.2f}s"
        f"{overhead(direct_mean, pipe_mean):>11}"
    )
    print("per turn: " + ", ".join(f"{(r - 1) * 100:+.1f} %" for r in ratios))
    print(
        f"per window ({direct.windows} a job): {(pipe_mean - direct_mean) / direct.windows * 1000:+.1f} ms "
        "of pipeline time; real models take seconds to minutes a window"
    )
    print(f"between queued jobs: {between_jobs * 1000:.0f} ms from one job's end to the next one's claim")
    print(f"fixed cost apart: pool start to worker serving {startup:.2f} s (process spawn, imports)")
    verdict = "within" if ratio - 1 < TARGET_OVERHEAD else "above"
    print(f"overhead ratio (median of the turns): {ratio:.3f} ({verdict} the {TARGET_OVERHEAD:.0%} target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
