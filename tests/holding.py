"""Hold a job at a known point, so a test can kill or stop things mid-job on any machine, fast or slow.

`HoldingRunner` wraps any runner: at a point of the run the test names ("checkpoint N": right
after the run hands over its Nth checkpoint; "progress N": after its Nth progress report, inside a
window) it waits for the test to release it. While it waits the worker is alive (heartbeats,
cancel polls go on); a stop the worker asks for ends the wait at once, so the wrapped runner sees
the stop itself, as it would mid-window.

In process a test holds with `EventGate`. Worker processes (pools, `jukebot worker`) take one of the
runner factories below and JUKEBOT_TEST_HOLD_DIR: a run holds at "checkpoint 1", writes
`held-<job>-<pid>` there, and goes on once `release-<job>` exists (`release_file`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, Protocol

from sampler.worker.contract import (
    DeviceSpec,
    JobRunner,
    JobTask,
    ProgressReporter,
    RunnerOptions,
    StopCheck,
)
from storage.records import NewSample

HOLD_DIR_VARIABLE = "JUKEBOT_TEST_HOLD_DIR"
NEVER_RELEASED_SECONDS = 300.0  # a test that forgets to release fails instead of hanging
POLL_SECONDS = 0.01


FIRST_CHECKPOINT = "checkpoint 1"


class Gate(Protocol):
    def hold(self, job_id: int, point: str, should_stop: StopCheck) -> None: ...


def _wait_for(released: Callable[[], bool], should_stop: StopCheck, what: str) -> None:
    deadline = time.monotonic() + NEVER_RELEASED_SECONDS
    pause = threading.Event()
    while not released() and should_stop() is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} was never released by the test")
        pause.wait(POLL_SECONDS)


class EventGate:
    """In process: `held[point]` is set when the run holds at `point`; set `release[point]` to go on."""

    def __init__(self, at: Collection[str] = (FIRST_CHECKPOINT,)) -> None:
        self.held = {point: threading.Event() for point in at}
        self.release = {point: threading.Event() for point in at}

    def hold(self, job_id: int, point: str, should_stop: StopCheck) -> None:
        if point not in self.held:
            return
        self.held[point].set()
        _wait_for(self.release[point].is_set, should_stop, f"job #{job_id} at {point}")


def release_file(hold_dir: Path, job_id: int) -> Path:
    return hold_dir / f"release-{job_id}"


def held_files(hold_dir: Path, job_id: int) -> list[Path]:
    """One file per run that held the job (named after the worker process's pid)."""
    return sorted(hold_dir.glob(f"held-{job_id}-*"))


class FileGate:
    """Across processes: holds after the first checkpoint of every run until `release-<job>` exists."""

    def __init__(self, hold_dir: Path) -> None:
        self.hold_dir = hold_dir

    def hold(self, job_id: int, point: str, should_stop: StopCheck) -> None:
        release = release_file(self.hold_dir, job_id)
        if point != FIRST_CHECKPOINT or release.exists():
            return
        (self.hold_dir / f"held-{job_id}-{os.getpid()}").touch()
        _wait_for(release.exists, should_stop, f"job #{job_id}")


class _HoldingReporter:
    def __init__(self, inner: ProgressReporter, gate: Gate, job_id: int, should_stop: StopCheck) -> None:
        self.inner, self.gate, self.job_id, self.should_stop = inner, gate, job_id, should_stop
        self.checkpoints = self.reports = 0

    def progress(self, *args: Any, **kwargs: Any) -> None:
        self.inner.progress(*args, **kwargs)
        self.reports += 1
        self.gate.hold(self.job_id, f"progress {self.reports}", self.should_stop)

    def checkpoint(self, blob: bytes | Callable[[], bytes]) -> None:
        self.inner.checkpoint(blob)
        self.checkpoints += 1
        self.gate.hold(self.job_id, f"checkpoint {self.checkpoints}", self.should_stop)


class HoldingRunner:
    """`inner`, held by `gate` after its checkpoints (see the module docstring)."""

    def __init__(self, inner: JobRunner, gate: Gate) -> None:
        self.inner, self.gate = inner, gate
        self.models = inner.models

    def run(self, task: JobTask, report: ProgressReporter, should_stop: StopCheck) -> list[NewSample]:
        holding = _HoldingReporter(report, self.gate, task.job.id, should_stop)
        return self.inner.run(task, holding, should_stop)


def _file_gate() -> FileGate:
    return FileGate(Path(os.environ[HOLD_DIR_VARIABLE]))


def held_toy_runner(device: DeviceSpec, options: RunnerOptions | None = None) -> HoldingRunner:
    """`tests.holding:held_toy_runner`: the toy runner, held after each run's first checkpoint."""
    from tests.sampler.worker.toy_runner import make_runner

    return HoldingRunner(make_runner(device, options), _file_gate())


def held_cascade_runner(device: DeviceSpec, options: RunnerOptions | None = None) -> HoldingRunner:
    """`tests.holding:held_cascade_runner`: the Jukebox runner, held after each run's first checkpoint."""
    from sampler.cascade_runner import make_runner

    return HoldingRunner(make_runner(device, options), _file_gate())
