"""A database path that goes silent mid-job: packets dropped, no reset (a NAT or firewall forgetting
the connection, a failover leaving the old address dead). A TCP proxy on loopback in front of the
real Postgres stops forwarding; the worker must notice in bounded time, sample on, and store its
progress once traffic flows again, on new connections."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from sampler.worker.contract import DeviceSpec, JobTask, ProgressReporter, StopCheck
from sampler.worker.runtime import JobOutcome, Worker
from storage import JobStatus, JobStore, NewSample, create_engine
from tests.holding import EventGate, HoldingRunner
from tests.sampler.worker import test_runtime
from tests.sampler.worker.test_runtime import EVERY_CHECKPOINT, assert_sampled_once_and_stored, claim, enqueue
from tests.sampler.worker.toy_runner import ToyRunner
from tests.waiting import wait_until

toy_env = test_runtime.toy_env  # the fixture: the toy runner's log directory

# The lease the worker holds the job with: each database call is given up after a quarter of it.
LEASE_SECONDS = 30.0


class _Flow:
    """One client connection through the proxy and its upstream connection to Postgres."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.dead = False  # forgotten by the path: nothing goes through, ever again
        self.hung = False  # the client sent something after it went dead (a call waited on it)
        self.client_closed = False


class BlackholeProxy:
    """Forwards TCP to Postgres until `go_dark()`: then every connection it carries, and every new
    one, swallows what is sent either way without closing (the peer hears nothing, not even a
    reset). After `resume()` new connections are forwarded again; the ones that went dark stay
    dead, as when a NAT forgets a flow. `downstream_bytes_per_second` / `upstream_bytes_per_second`:
    each connection's answers / requests go at most that fast (a slow link)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        downstream_bytes_per_second: float | None = None,
        upstream_bytes_per_second: float | None = None,
    ) -> None:
        self._target = (host, port)
        self._rates = {False: downstream_bytes_per_second, True: upstream_bytes_per_second}
        self._dark = False
        self._flows: list[_Flow] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def go_dark(self) -> None:
        self._dark = True
        for flow in self._flows:
            flow.dead = True

    def resume(self) -> None:
        self._dark = False

    def hung_and_open(self) -> int:
        """Connections a call hung on that the client has not closed (kept for reuse)."""
        return sum(flow.hung and not flow.client_closed for flow in self._flows)

    def connections_after_resume(self) -> int:
        return sum(not flow.dead for flow in self._flows)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for flow in self._flows:
            for writer in (flow.client, flow.upstream):
                if writer is not None:
                    writer.transport.abort()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        flow = _Flow(writer)
        self._flows.append(flow)
        if self._dark:  # the path is gone: the connection "opens" and hears nothing back
            flow.dead = True
            self._spawn(self._pipe(reader, None, flow, from_client=True))
            return
        upstream_reader, flow.upstream = await asyncio.open_connection(*self._target)
        self._spawn(self._pipe(reader, flow.upstream, flow, from_client=True))
        self._spawn(self._pipe(upstream_reader, writer, flow, from_client=False))

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter | None,
        flow: _Flow,
        *,
        from_client: bool,
    ) -> None:
        try:
            while data := await reader.read(65536):
                if flow.dead:
                    flow.hung |= from_client
                    continue  # swallowed: no answer, no reset
                assert writer is not None
                writer.write(data)
                await writer.drain()
                rate = self._rates[from_client]
                if rate is not None:
                    await asyncio.sleep(len(data) / rate)  # the link's bandwidth
        except (ConnectionError, OSError):
            pass
        finally:
            if from_client:
                flow.client_closed = True
                if flow.upstream is not None:
                    flow.upstream.transport.abort()  # let the Postgres backend go
            elif not flow.dead:
                flow.client.transport.abort()


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_a_silent_database_path_is_noticed_in_time_and_the_job_goes_on(
    db_url: str, toy_env: Path
) -> None:
    address = make_url(db_url)
    proxy = BlackholeProxy(address.host or "127.0.0.1", address.port or 5432)
    proxied_url = address.set(host="127.0.0.1", port=await proxy.start()).render_as_string(False)
    direct_engine = create_engine(db_url)
    direct = JobStore(direct_engine)  # the test's own view, not through the proxy
    worker_engine = create_engine(proxied_url)  # exactly what a worker process builds
    store = JobStore(worker_engine)
    gate = EventGate(at=("checkpoint 1", "checkpoint 3"))
    config = dataclasses.replace(EVERY_CHECKPOINT, lease_seconds=LEASE_SECONDS, retry_max_seconds=0.2)
    worker = Worker(store, HoldingRunner(ToyRunner(DeviceSpec.cpu()), gate), DeviceSpec.cpu(), config=config)
    running: asyncio.Task[JobOutcome] | None = None
    try:
        job_id = await enqueue(direct, params={"seconds": 2.0})
        claimed = await claim(store, worker)
        running = asyncio.create_task(worker.run_job(claimed))
        assert await asyncio.to_thread(gate.held["checkpoint 1"].wait, 60), "no first checkpoint"
        await wait_until(lambda: direct.get_checkpoint(job_id), what="the first checkpoint stored")

        proxy.go_dark()
        gate.release["checkpoint 1"].set()  # sampling goes on; every call through the proxy hangs

        async def database_away() -> bool:
            assert running is not None and not running.done(), f"the run ended: {running}"
            return worker.database_away

        # A call is given up after a quarter of the lease (plus closing what it hung on): the worker
        # knows the database is away long before the lease, by the database's clock, runs out.
        await wait_until(database_away, LEASE_SECONDS / 2, "the worker to notice the silent database")

        async def sampled_on() -> bool:
            assert running is not None and not running.done(), f"the run ended: {running}"
            return gate.held["checkpoint 3"].is_set()  # handed over two checkpoints it could not store

        await wait_until(sampled_on, 60, "the runner to sample on while the database is away")
        job = await direct.get_job(job_id)
        assert job.status is JobStatus.RUNNING and job.lease_owner == worker.worker_id

        proxy.resume()
        gate.release["checkpoint 3"].set()

        async def database_back() -> bool:
            return not worker.database_away

        await wait_until(database_back, LEASE_SECONDS / 2, "the worker to reach the database again")
        # The checkpoint that hung through the outage is tried again at once on a new connection (not
        # after its own time limit, a whole lease, with the runner waiting for it): the job ends soon.
        assert await asyncio.wait_for(running, LEASE_SECONDS / 2) is JobOutcome.SUCCEEDED
        assert proxy.connections_after_resume() > 0  # what it stored went through new connections

        async def hung_connections_closed() -> bool:
            return proxy.hung_and_open() == 0

        # Every connection a call hung on was thrown away, not kept in the pool for another call.
        await wait_until(hung_connections_closed, 10, "the connections calls hung on to be discarded")

        await assert_sampled_once_and_stored(direct, claimed, toy_env)
    finally:
        await proxy.close()  # hung calls fail at once (reset): nothing below waits on them
        for release in gate.release.values():
            release.set()
        # each cancel ends one wait (the run stores what it holds on its way out)
        await end_run(running, worker, worker_engine, direct_engine)


class CheckpointReadingRunner:
    """Records the checkpoint each run gets, then runs `inner` from scratch (a made-up checkpoint of
    megabytes means nothing to the toy runner)."""

    def __init__(self, inner: ToyRunner) -> None:
        self.inner, self.models = inner, inner.models
        self.checkpoints: list[bytes | None] = []

    def run(self, task: JobTask, report: ProgressReporter, should_stop: StopCheck) -> list[NewSample]:
        self.checkpoints.append(task.checkpoint)
        return self.inner.run(dataclasses.replace(task, checkpoint=None), report, should_stop)


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_a_big_checkpoint_over_a_slow_link_is_read_after_the_claim(db_url: str, toy_env: Path) -> None:
    """A claim is bounded by a quarter of the lease (and holds up every worker's claims): carrying a
    checkpoint of megabytes over a slow link, it ran out of time at every try, and this worker never
    claimed anything again. The checkpoint is read once the job is the worker's, under the limit of
    a call that carries megabytes (a whole lease)."""
    lease = 8.0  # a claim may take 2 s, reading the checkpoint 8 s; the link needs 4 s for it
    address = make_url(db_url)
    proxy = BlackholeProxy(
        address.host or "127.0.0.1", address.port or 5432, downstream_bytes_per_second=256 * 1024
    )
    proxied_url = address.set(host="127.0.0.1", port=await proxy.start()).render_as_string(False)
    direct_engine = create_engine(db_url)
    direct = JobStore(direct_engine)
    worker_engine = create_engine(proxied_url)
    config = dataclasses.replace(EVERY_CHECKPOINT, lease_seconds=lease, retry_max_seconds=0.2)
    runner = CheckpointReadingRunner(ToyRunner(DeviceSpec.cpu()))
    worker = Worker(JobStore(worker_engine), runner, DeviceSpec.cpu(), config=config)
    stop = asyncio.Event()
    serving: asyncio.Task[None] | None = None
    try:
        job_id = await enqueue(direct, params={"seconds": 1.0, "n_samples": 1})
        # It ran before on a worker that was stopped: 1 MiB of codes wait to be resumed from.
        assert (await direct.claim("stopped-worker", ["5b_lyrics"], lease_seconds=60)) is not None
        big = os.urandom(1 << 20)
        await direct.save_checkpoint(job_id, "stopped-worker", big)
        await direct.release(job_id, "stopped-worker")

        serving = asyncio.create_task(worker.serve(stop))

        async def finished() -> bool:
            assert serving is not None and not serving.done(), f"the worker stopped: {serving}"
            return (await direct.get_job(job_id)).status is JobStatus.SUCCEEDED

        await wait_until(finished, 60, "the job to be claimed, resumed and finished over the slow link")
        assert (await direct.get_job(job_id)).attempts == 0  # no try of it was lost
        assert runner.checkpoints == [big]
    finally:
        stop.set()
        if serving is not None:
            await asyncio.wait_for(serving, 60)
        await proxy.close()
        await asyncio.wait_for(asyncio.to_thread(worker.close), 60)
        await worker_engine.dispose()
        await direct_engine.dispose()


class BigFirstCheckpointRunner:
    """Hands over a checkpoint of 1 MiB first (a long job's codes), then runs `inner`; the worker
    stores a run's checkpoints in turn, so the job cannot end before that one is stored."""

    def __init__(self, inner: ToyRunner) -> None:
        self.inner, self.models = inner, inner.models

    def run(self, task: JobTask, report: ProgressReporter, should_stop: StopCheck) -> list[NewSample]:
        report.checkpoint(os.urandom(1 << 20))
        return self.inner.run(task, report, should_stop)


class BigLastCheckpointRunner:
    """Runs `inner`, then hands over a checkpoint of 1 MiB after its last window, as the cascade does
    before it decodes, and returns the samples."""

    def __init__(self, inner: ToyRunner) -> None:
        self.inner, self.models = inner, inner.models

    def run(self, task: JobTask, report: ProgressReporter, should_stop: StopCheck) -> list[NewSample]:
        samples = self.inner.run(task, report, should_stop)
        report.checkpoint(os.urandom(1 << 20))
        return samples


async def _run_over_a_slow_uplink(
    db_url: str,
    bytes_per_second: float,
    job_fields: dict[str, Any],
    runner_type: type[BigFirstCheckpointRunner | BigLastCheckpointRunner] = BigFirstCheckpointRunner,
) -> Any:
    """Run one job on a worker whose requests reach Postgres at `bytes_per_second`; the job as it
    ended, or the test fails after 90 s."""
    address = make_url(db_url)
    proxy = BlackholeProxy(
        address.host or "127.0.0.1", address.port or 5432, upstream_bytes_per_second=bytes_per_second
    )
    proxied_url = address.set(host="127.0.0.1", port=await proxy.start()).render_as_string(False)
    direct_engine = create_engine(db_url)
    direct = JobStore(direct_engine)
    worker_engine = create_engine(proxied_url)
    # A checkpoint's first try may take 4 s (a whole lease), then 8 s, then 16 s.
    config = dataclasses.replace(EVERY_CHECKPOINT, lease_seconds=4.0, retry_max_seconds=0.2)
    runner = runner_type(ToyRunner(DeviceSpec.cpu()))
    worker = Worker(JobStore(worker_engine), runner, DeviceSpec.cpu(), config=config)
    stop = asyncio.Event()
    serving = asyncio.create_task(worker.serve(stop))
    try:
        job_id = await enqueue(direct, params={"seconds": 0.5}, **job_fields)

        async def ended() -> Any:
            assert not serving.done(), f"the worker stopped: {serving}"
            job = await direct.get_job(job_id)
            return job if job.finished else None

        return await wait_until(ended, 90, "the job to end")
    finally:
        stop.set()
        await asyncio.wait_for(serving, 60)
        await proxy.close()
        await asyncio.wait_for(asyncio.to_thread(worker.close), 60)
        await worker_engine.dispose()
        await direct_engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_a_checkpoint_slower_than_its_time_limit_gets_more_time_while_heartbeats_get_through(
    db_url: str, toy_env: Path
) -> None:
    """1 MiB at 192 KiB/s takes 5.3 s, more than the 4 s a try had: each try was cut short and begun
    again, the lease renewed all along, and the job never ended, its GPU held."""
    job = await _run_over_a_slow_uplink(db_url, 192 * 1024, {})
    assert job.status is JobStatus.SUCCEEDED and job.attempts == 0


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_a_checkpoint_that_never_fits_its_time_crashes_the_job_instead_of_holding_it_forever(
    db_url: str, toy_env: Path
) -> None:
    job = await _run_over_a_slow_uplink(db_url, 16 * 1024, {"max_attempts": 1})  # 64 s for 1 MiB
    assert job.status is JobStatus.FAILED
    assert (
        job.error is not None
        and (
            f"the last error was: StoreCallTooSlow: job #{job.id}: storing a checkpoint failed 3 times in a row"
        )
        in job.error
    )


@pytest.mark.postgres
@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_a_last_checkpoint_that_never_fits_does_not_cost_the_finished_samples(
    db_url: str, toy_env: Path
) -> None:
    """A finished run needs no checkpoint (its samples hold the codes): waiting for one the link cannot
    carry crashed the job and threw the samples away."""
    job = await _run_over_a_slow_uplink(db_url, 16 * 1024, {"max_attempts": 1}, BigLastCheckpointRunner)
    assert job.status is JobStatus.SUCCEEDED and job.error is None


async def end_run(running: asyncio.Task[Any] | None, worker: Worker, *engines: AsyncEngine) -> None:
    """A test's teardown: cancel `running` until it ends (each cancel ends one wait), close `worker`,
    dispose of `engines`."""
    for _ in range(20):
        if running is None or running.done():
            break
        running.cancel()
        await asyncio.wait([running], timeout=1)
    await asyncio.wait_for(asyncio.to_thread(worker.close), 60)
    for engine in engines:
        await engine.dispose()
