"""Two workers on one GPU (`jukebot worker` started twice, or beside `jukebot run`'s own workers): they
share its memory and time, and their jobs failed "out of memory" telling members to lower a setting.
A worker now says so at start, naming the other process. The other worker here is a live process of
this machine recorded in the workers table as a worker on the GPU, as a real one records itself."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from sampler.worker.contract import DeviceSpec
from sampler.worker.runtime import Worker, make_worker_id
from storage import JobStore
from tests.sampler.worker.test_runtime import FAST, live_store, toy_env  # noqa: F401
from tests.sampler.worker.toy_runner import ToyRunner
from tests.waiting import wait_until

SHARED = "another worker on this machine runs on"
Start = Callable[[DeviceSpec], Awaitable[Worker]]


@pytest.fixture
def other_process(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[subprocess.Popen[bytes]]:
    """Another process of this machine; `CUDA_VISIBLE_DEVICES` as the test's `visible` param says
    (indirect), and unset in this one."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    visible = getattr(request, "param", None)
    env = {key: value for key, value in os.environ.items() if key != "CUDA_VISIBLE_DEVICES"}
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], env=env)
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def worker_id_of(pid: int, device: DeviceSpec) -> str:
    """The worker id process `pid` of this machine has as a worker on `device` (`make_worker_id`)."""
    host = make_worker_id(device).rsplit("/", 2)[0]
    return f"{host}/{pid}/{device}"


@pytest.fixture
async def started(live_store: JobStore, toy_env: Path) -> AsyncIterator[Start]:  # noqa: F811
    """`start(device)`: a worker on `device` serving until the test ends, once it has warmed up."""
    stop = asyncio.Event()
    running: list[tuple[Worker, asyncio.Task[None]]] = []

    async def start(device: DeviceSpec) -> Worker:
        worker = Worker(live_store, ToyRunner(device), device, config=FAST)
        running.append((worker, asyncio.create_task(worker.serve(stop))))

        async def warmed_up() -> bool:
            return worker.warmed_up

        await wait_until(warmed_up, 30, "the worker to warm up")
        return worker

    yield start
    stop.set()
    for worker, task in running:
        await asyncio.wait_for(task, 30)
        worker.close()


async def warnings_at_start(
    store: JobStore, started: Start, caplog: pytest.LogCaptureFixture, others: list[str], mine: DeviceSpec
) -> list[str]:
    """The shared-GPU warnings of a worker started on `mine` with the worker ids `others` recorded."""
    for other in others:
        await store.record_worker(other, ["5b_lyrics"])
    caplog.set_level(logging.WARNING)
    await started(mine)
    return [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and SHARED in r.getMessage()
    ]


@pytest.mark.parametrize("other_process", [None, "0", "0,1"], indirect=True, ids=["all", "just-0", "0-first"])
async def test_a_worker_on_a_gpu_another_worker_of_this_machine_runs_on_says_so(
    live_store: JobStore,  # noqa: F811
    started: Start,
    other_process: subprocess.Popen[bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    gpu = DeviceSpec.cuda(0)
    others = [worker_id_of(other_process.pid, gpu), worker_id_of(other_process.pid, DeviceSpec.cuda(1))]
    (warning,) = await warnings_at_start(live_store, started, caplog, others, gpu)
    assert f"runs on cuda:0 too (pid {other_process.pid})" in warning
    assert "give each worker a GPU of its own (JUKEBOT_GPUS)" in warning


@pytest.mark.parametrize("case", ["another GPU", "a process that exited", "CPU workers"])
async def test_no_warning_where_the_gpu_is_not_shared(
    live_store: JobStore,  # noqa: F811
    started: Start,
    other_process: subprocess.Popen[bytes],
    caplog: pytest.LogCaptureFixture,
    case: str,
) -> None:
    mine = DeviceSpec.cpu() if case == "CPU workers" else DeviceSpec.cuda(0)
    other = DeviceSpec.cuda(1) if case == "another GPU" else mine
    if case == "a process that exited":  # a predecessor: its job is resumed, nothing shares the GPU
        other_process.kill()
        other_process.wait()
    others = [worker_id_of(other_process.pid, other)]
    assert await warnings_at_start(live_store, started, caplog, others, mine) == []


@pytest.mark.parametrize("other_process", ["1", "1,0"], indirect=True, ids=["just-1", "1-first"])
async def test_cuda_0_of_a_process_that_sees_another_gpu_is_not_this_gpu(
    live_store: JobStore,  # noqa: F811
    started: Start,
    other_process: subprocess.Popen[bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two workers pinned with CUDA_VISIBLE_DEVICES both call their GPU cuda:0 (review: each warned
    of the other)."""
    gpu = DeviceSpec.cuda(0)
    others = [worker_id_of(other_process.pid, gpu)]
    assert await warnings_at_start(live_store, started, caplog, others, gpu) == []
