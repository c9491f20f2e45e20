"""A runner's warm-up: the worker calls it once, in the runner's thread, before its first claim; one
that fails is logged and the worker serves anyway."""

from __future__ import annotations

import asyncio
import gc
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from sampler.worker.contract import DeviceSpec, JobTask, ProgressReporter, StopCheck, WarmsUp
from sampler.worker.runtime import Worker
from storage import JobStatus, JobStore, NewSample
from tests.sampler.worker.test_runtime import FAST, enqueue, toy_env
from tests.sampler.worker.toy_runner import ToyRunner
from tests.waiting import wait_until

__all__ = ["toy_env"]


class WarmingToyRunner(ToyRunner):
    """The toy runner with a start-up step; notes what happened, in order, and on which thread."""

    def __init__(self, events: list[str], fails: bool) -> None:
        super().__init__(DeviceSpec.cpu())
        self.events, self.fails = events, fails
        self.threads: set[str] = set()

    def warm_up(self, alive: Callable[[], None]) -> None:
        self.events.append("warm up")
        self.threads.add(threading.current_thread().name)
        if self.fails:
            raise RuntimeError("the warm-up failed on purpose")

    def run(self, task: JobTask, report: ProgressReporter, should_stop: StopCheck) -> list[NewSample]:
        self.threads.add(threading.current_thread().name)
        return super().run(task, report, should_stop)


class ClaimsNoted(JobStore):
    def __init__(self, engine: AsyncEngine, events: list[str]) -> None:
        super().__init__(engine)
        self.events = events

    async def claim(self, *args: Any, **kwargs: Any) -> Any:
        self.events.append("claim")
        return await super().claim(*args, **kwargs)


@pytest.mark.parametrize("fails", [False, True], ids=["warms up", "warm-up fails"])
async def test_the_worker_warms_its_runner_up_once_before_its_first_claim(
    engine: AsyncEngine, toy_env: Path, caplog: pytest.LogCaptureFixture, fails: bool
) -> None:
    events: list[str] = []
    store = ClaimsNoted(engine, events)
    runner = WarmingToyRunner(events, fails)
    assert isinstance(runner, WarmsUp) and not isinstance(ToyRunner(DeviceSpec.cpu()), WarmsUp)
    worker = Worker(store, runner, DeviceSpec.cpu(), config=FAST)
    first = await enqueue(store, params={"seconds": 0.25})
    stop = asyncio.Event()
    caplog.set_level(logging.ERROR, logger="asyncio")
    with caplog.at_level(logging.INFO, logger="sampler.worker.runtime"):
        serving = asyncio.create_task(worker.serve(stop))
        try:

            async def done(job_id: int) -> bool:
                return (await store.get_job(job_id)).status is JobStatus.SUCCEEDED

            await wait_until(lambda: done(first), what="the first job to succeed")
            second = await enqueue(store, params={"seconds": 0.25})
            await wait_until(lambda: done(second), what="the second job to succeed")
        finally:
            stop.set()
            await asyncio.wait_for(serving, 30)
            worker.close()
    assert events[0] == "warm up" and events.count("warm up") == 1 and "claim" in events
    assert len(runner.threads) == 1 and next(iter(runner.threads)).startswith("runner-cpu")
    messages = [record.getMessage() for record in caplog.records]
    if fails:
        assert any("warming up failed after" in m and "serving anyway" in m for m in messages)
    else:
        assert any("runner warmed up in" in m for m in messages)
    # The error was handled: asyncio must not report it again as never retrieved (a copy of it on the
    # warm-up's wrapped future did, once collected).
    gc.collect()
    messages = [record.getMessage() for record in caplog.records]
    assert not [m for m in messages if "never retrieved" in m], messages
