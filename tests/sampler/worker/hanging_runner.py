"""`python -m tests.sampler.worker.hanging_runner DATABASE_URL`: a worker process (`worker_main`) whose
runner hangs warming up, and whose database engine then fails to close (`dispose` raises), an error on
the way out after the hang. The process must still exit, with EXIT_HUNG, rather than wait at
interpreter exit for the runner thread that never ends."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from sampler.worker import runtime
from sampler.worker.contract import DeviceSpec, JobTask, ProgressReporter, RunnerOptions, StopCheck
from storage import NewSample

STALL_SECONDS = 1.0


class HangingRunner:
    models = frozenset({"5b"})

    def warm_up(self, alive: Callable[[], None]) -> None:
        threading.Event().wait()  # never set: a GPU that stopped answering

    def run(self, task: JobTask, report: ProgressReporter, should_stop: StopCheck) -> list[NewSample]:
        raise AssertionError("never claims: it hangs warming up")


def make(device: DeviceSpec, options: RunnerOptions) -> HangingRunner:
    return HangingRunner()


async def _fail_to_close(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("closing the database's connections failed")


if __name__ == "__main__":
    AsyncEngine.dispose = _fail_to_close  # type: ignore[method-assign]  # (this process's alone)
    config = runtime.WorkerConfig(poll_seconds=0.05, max_poll_seconds=0.1, stall_seconds=STALL_SECONDS)
    runtime.worker_main(
        sys.argv[1], "cpu", "tests.sampler.worker.hanging_runner:make", config, watch_parent=False
    )
