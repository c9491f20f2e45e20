"""`tests.sampler.worker.dying_runner:make`: a runner whose process is SIGKILLed while it warms up, as
the kernel's out-of-memory killer does to a worker loading more than the machine holds."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from sampler.worker.contract import DeviceSpec, JobTask, ProgressReporter, RunnerOptions, StopCheck
from storage import NewSample


class DyingRunner:
    models = frozenset({"5b"})

    def warm_up(self, alive: Callable[[], None]) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def run(self, task: JobTask, report: ProgressReporter, should_stop: StopCheck) -> list[NewSample]:
        raise AssertionError("never claims: it dies warming up")


def make(device: DeviceSpec, options: RunnerOptions) -> DyingRunner:
    return DyingRunner()
