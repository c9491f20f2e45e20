"""A worker: one process, one device, one job at a time, never losing work.

An asyncio loop does all the database work; the runner samples in a thread of its own
(torch releases the GIL), so heartbeats keep the lease alive through long windows. Per job:

* heartbeat every lease/3, and poll for a cancel request every `cancel_poll_seconds`;
* progress is written at most every `progress_seconds` (the latest report wins), with tokens/s
  and an ETA computed here (each level timed on its own when the runner samples several at once);
* checkpoints are stored while the next window samples, at most one per `checkpoint_seconds`
  (a newer one held back is stored once that time has passed, and always before the job is
  released or retried, so a stop never loses a finished window);
* the end: samples -> `complete`; a cancel -> `cancelled`; a shutdown -> `release` (back to the
  queue, checkpoint kept, no attempt counted); a lost lease -> nothing written; a failure that
  retrying cannot fix (missing model files, bad parameters, out of memory) -> `failed` at once;
  any other exception (a crash) -> back to the queue with one more attempt and the error kept,
  `failed` once `max_attempts` is reached.

While the database is unreachable the job goes on: sampling continues, only the newest
checkpoint is kept in memory, and heartbeats, progress, checkpoints and the job's end are tried
again with growing pauses until the database is back. A call the database does not answer in time
(a network path gone silent drops packets without a reset) counts as the database being away:
each try is bounded (`WorkerConfig.call_seconds`, a quarter of the lease; a whole lease for one
carrying a checkpoint or samples) and the connection it hung on is discarded; tries that waited
through an outage are made again at once when it ends. Only the database can say the lease is
lost (another worker holds the job, or it went back to the queue), and only that stops the run:
a lease that ran out while the database was away stays the worker's until someone takes the job,
and nobody does for a lease after first seeing it run out (the store's rule; nor does a worker ever
take the one it runs), so a worker cut off for longer than its lease renews it and stores its work.
A worker that is stopping (a stop signal, or its pool gone: nobody would ever kill it) waits for the
database only until the job's lease has run out, then leaves the job to its lease (it comes back
from its last stored checkpoint) and exits, freeing its device.
A worker restarted on the same machine and device resumes at once the job its
predecessor (a process that is gone) held, instead of waiting for the lease to run out; a job whose
claim the database committed but whose answer never arrived is taken back by the next claim, costing
no attempt.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import hashlib
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol, TypeVar

from sampler.worker.contract import (
    DeviceError,
    DeviceSpec,
    JobCancelled,
    JobDidNotFit,
    JobFailed,
    JobInterrupted,
    JobRunner,
    JobTask,
    LevelProgress,
    ModelNotHere,
    OutOfMemory,
    RunnerFactoryError,
    Stage,
    StopReason,
    WarmsUp,
    load_runner_factory,
)
from sampler.worker.logs import configure_logging
from sampler.worker.memory import is_out_of_memory
from sampler.worker.stop_signals import STOP_SIGNALS, handled_stop_signals
from storage import WORKER_PRESENCE_SECONDS, JobStatus, JobStore, LeaseLost, StorageError, create_engine
from storage.errors import (
    InvalidSample,
    Outage,
    PrimeNotFound,
    SampleNotFound,
    database_unreachable,
    errors_within,
    outage_of,
)
from storage.records import ClaimedJob, LevelWindow

log = logging.getLogger(__name__)
T = TypeVar("T")

EXIT_OK = 0
EXIT_CRASH = 1
EXIT_CONFIG = 78  # EX_CONFIG: restarting will not help (bad runner path, no such device)
# EX_SOFTWARE: its runner thread hangs (`RunnerHung`); restarted as a crash. The process exits without
# waiting for that thread, which would never end.
EXIT_HUNG = 70

# What a worker process tells its pool, in the shared `WorkerState` (see `sampler.worker.pool`).
STATE_SERVING = 0  # 1 once the worker finished warming up and claims jobs
STATE_JOB = 1  # the id of the job it runs now (0: none)
# 1 when that job is out of attempts should this worker die: it then fails rather than resume
STATE_LAST_ATTEMPT = 2
STATE_SIZE = 3


class WorkerState(Protocol):
    """Integers a worker process shares with its pool (a lock-free `multiprocessing` array: a worker
    killed mid-write must not leave a lock held), indexed by the `STATE_*` constants above."""

    def __getitem__(self, index: int) -> int: ...

    def __setitem__(self, index: int, value: int) -> None: ...


class DeviceUnusable(DeviceError):
    """The worker's device cannot run jobs (found at start or by the runner's warm-up): the worker
    exits with EXIT_CONFIG instead of claiming jobs that would all fail."""


class DeviceContextLost(DeviceError):
    """A CUDA error that leaves the process's CUDA context broken (an illegal memory access, a
    device-side assert): every later job in this process would crash the same way, burning its attempts.
    The crashed job is recorded as such, and the worker exits with EXIT_CRASH for its pool to start a
    fresh process, with a fresh context."""


# Set once a worker of this process gave up on its hung runner thread: the process then ends with
# os._exit, whatever else goes wrong on the way out, since Python's exit would join that thread forever.
_RUNNER_THREAD_HANGS = threading.Event()


class RunnerHung(Exception):
    """The runner showed no sign of life (no progress, checkpoint or stop check) for `stall_seconds`:
    a GPU that stopped answering, a deadlock. Its thread cannot be stopped, so its job is recorded as
    crashed (back to the queue from its last checkpoint, an attempt counted) and the worker process
    exits with EXIT_HUNG without waiting for that thread; its pool starts a fresh one."""


class _RunnerSilent(Exception):
    """Raised in the job's task when the watch (`Worker._stall_loop`) gave up on its runner; becomes
    `RunnerHung` once the job is recorded (`Worker._hung`)."""


class WorkerConfigError(ValueError):
    """A worker timing setting out of range."""


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    lease_seconds: float = 60.0  # silent this long, and a lease more once seen so: back to the queue
    poll_seconds: float = 0.5  # first wait when the queue is empty…
    max_poll_seconds: float = 5.0  # …doubling up to this while it stays empty
    progress_seconds: float = 2.0  # at most one progress write per this many seconds
    cancel_poll_seconds: float = 1.0  # how quickly a cancel request is seen
    requeue_seconds: float = 30.0  # how often this worker fails or cancels jobs of dead workers
    checkpoint_retries: int = 3  # tries to store one checkpoint through errors other than an outage
    # The longest pause between tries while the database is unreachable (the pauses double up to it).
    retry_max_seconds: float = 5.0
    # At most one checkpoint write per this many seconds (0: after every window). Real windows take
    # seconds to minutes, so each is stored; this keeps tiny or very fast windows from spending
    # their time in the database.
    checkpoint_seconds: float = 1.0
    # The runner's own settings, handed to its factory: (key, value) pairs, e.g. ("model_dir", "…").
    runner_options: tuple[tuple[str, str], ...] = ()
    # After a job crashed, wait this long before the next claim (doubling while crashes follow one
    # another, up to `max_crash_backoff_seconds`): a crash that repeats does not burn every queued
    # job's attempts within a second, and another worker may take the job meanwhile.
    crash_backoff_seconds: float = 1.0
    max_crash_backoff_seconds: float = 60.0
    # A runner silent this long (no progress, checkpoint or stop check) hangs (`RunnerHung`). Far above
    # its longest quiet stretch: loading a 5B prior from a slow disk, or on a CPU one prefill pass, 32
    # tokens or a sample's VQ-VAE decode of a 5B model (minutes each; the cascade reports between them).
    stall_seconds: float = 1800.0

    def __post_init__(self) -> None:
        seconds = ("lease_seconds", "poll_seconds", "max_poll_seconds", "progress_seconds")
        backoff = ("crash_backoff_seconds", "max_crash_backoff_seconds")
        others = ("cancel_poll_seconds", "requeue_seconds", "retry_max_seconds", "stall_seconds")
        for name in (*seconds, *others, *backoff):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise WorkerConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.max_poll_seconds < self.poll_seconds:
            raise WorkerConfigError("max_poll_seconds must be at least poll_seconds")
        if self.max_crash_backoff_seconds < self.crash_backoff_seconds:
            raise WorkerConfigError("max_crash_backoff_seconds must be at least crash_backoff_seconds")
        if self.checkpoint_retries < 1:
            raise WorkerConfigError("checkpoint_retries must be at least 1")
        if not math.isfinite(self.checkpoint_seconds) or self.checkpoint_seconds < 0:
            raise WorkerConfigError(
                "checkpoint_seconds must be zero or a positive number of seconds, got "
                f"{self.checkpoint_seconds!r}"
            )

    @property
    def heartbeat_seconds(self) -> float:
        return self.lease_seconds / 3

    @property
    def call_seconds(self) -> float:
        """How long one try of a database call may go unanswered before it counts as the database
        being away (its connection is then discarded): a quarter of the lease, so a heartbeat that
        hangs is given up, and tried again on a new connection, while the lease still runs."""
        return self.lease_seconds / 4

    @property
    def bulk_call_seconds(self) -> float:
        """The same for a call that carries megabytes (a checkpoint, the samples, a job's inputs): a
        whole lease. The heartbeat has connections of its own, so the lease does not wait on it."""
        return self.lease_seconds


def make_worker_id(device: DeviceSpec) -> str:
    """host/pid/device — unique per process, and says where a job runs (stored as the lease owner).
    The host part (`this_machine`) carries where its process ids mean the same processes."""
    return f"{this_machine()}/{os.getpid()}/{device}"


def this_machine() -> str:
    """The host part of the ids of workers started here: the host name, and `_pid_scope` where it can
    be read (the same for every process of one container, or of one machine outside containers)."""
    scope = _pid_scope()
    return f"{socket.gethostname()}~{scope}" if scope else socket.gethostname()


def machine_of(worker_id: str) -> str:
    """The host part of a worker id from `make_worker_id`."""
    return worker_id.rsplit("/", 2)[0]


def _pid_scope() -> str:
    """A short mark of this kernel's boot and this process-id namespace ('' where neither can be
    read): machines cloned from one image, or containers, may share a host name, and a process id
    says nothing about a process in another of them."""
    parts = []
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:8] if parts else ""


def pid_of(worker_id: str) -> int:
    """The process id inside a worker id from `make_worker_id`."""
    return int(worker_id.split("/")[-2])


def predecessor_is_gone(worker_id: str, owner: str) -> bool:
    """True when lease owner `owner` was a worker on this worker's machine (the same host name, boot and
    process-id namespace) and device whose process has exited (a killed worker the pool restarted):
    its job can be resumed at once. Anyone else's lease runs out first."""
    pid = _other_process_on_my_device(worker_id, owner)
    return pid is not None and not _process_running(pid)


CUDA_VISIBLE = "CUDA_VISIBLE_DEVICES"


def shares_my_device(worker_id: str, other: str) -> bool:
    """True when worker id `other` is another process on this worker's machine and device that still
    runs: two workers on one GPU share its memory and time. A worker id names the GPU as its process
    sees it: with CUDA_VISIBLE_DEVICES, cuda:0 of two processes may be two GPUs, so the physical ones
    are compared (read from the other's environment; not known: not shared)."""
    pid = _other_process_on_my_device(worker_id, other)
    if pid is None or not _process_running(pid):
        return False
    index = DeviceSpec(worker_id.rsplit("/", 1)[1]).index
    if index is None:
        return True
    mine = _physical_gpu(os.environ.get(CUDA_VISIBLE), index)
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    prefix = CUDA_VISIBLE.encode() + b"="
    visible = next(
        (entry[len(prefix) :].decode(errors="replace") for entry in environ if entry.startswith(prefix)), None
    )
    theirs = _physical_gpu(visible, index)
    return mine is not None and mine == theirs


def _physical_gpu(visible: str | None, index: int) -> str | None:
    """Which GPU cuda:`index` is under CUDA_VISIBLE_DEVICES=`visible` (its entry: an index or a UUID)."""
    if visible is None:
        return str(index)
    entries = [entry.strip() for entry in visible.split(",")]
    return entries[index] if index < len(entries) and entries[index] else None


def _other_process_on_my_device(worker_id: str, other: str) -> int | None:
    """The process id in worker id `other` when it names another process on `worker_id`'s machine and
    device, else None."""
    try:
        host, pid, device = other.rsplit("/", 2)
        my_host, my_pid, my_device = worker_id.rsplit("/", 2)
        other_pid = int(pid)
    except ValueError:  # not a worker id of ours
        return None
    if (host, device) != (my_host, my_device) or pid == my_pid or other_pid <= 0:
        return None
    return other_pid


def _process_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: running
        return True
    try:  # a zombie has exited; only its parent has not collected it yet
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


class JobOutcome(enum.StrEnum):
    """How `run_job` ended (for logs and tests)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    RETRYING = "retrying"  # crashed; queued again with one more attempt
    RELEASED = "released"  # shutdown; queued again, no attempt counted
    ABANDONED = "abandoned"  # the lease was lost; nothing written
    # stopping while the database stayed away until the lease ran out: the lease brings the job back
    LEFT_TO_LEASE = "left to its lease"


# ----------------------------------------------------------------------------- one running job


@dataclass(frozen=True, slots=True)
class _Progress:
    stage: str
    fraction: float
    level: int | None
    window: int | None
    window_count: int | None
    tokens_done: int
    tokens_total: int
    tokens_per_second: float | None
    eta_at: datetime | None
    level_windows: tuple[LevelWindow, ...] = ()


_STOP_PRIORITY = {StopReason.SHUTDOWN: 1, StopReason.CANCEL: 2, StopReason.LEASE_LOST: 3}
RATE_WINDOW_SECONDS = 30.0  # tokens/s is measured over this much recent time


class _RateMeter:
    """Tokens per second over the last `RATE_WINDOW_SECONDS` of reports."""

    def __init__(self) -> None:
        self._recent: deque[tuple[float, int]] = deque()

    def add(self, now: float, tokens_done: int) -> float | None:
        self._recent.append((now, tokens_done))
        while len(self._recent) > 2 and now - self._recent[1][0] > RATE_WINDOW_SECONDS:
            self._recent.popleft()
        start_time, start_tokens = self._recent[0]
        if now <= start_time or tokens_done <= start_tokens:
            return None
        return (tokens_done - start_tokens) / (now - start_time)


class LevelTimer:
    """Times each level of a job on its own, for a runner that samples several levels at once."""

    def __init__(self) -> None:
        self._meters: dict[int, _RateMeter] = {}

    def estimate(
        self, levels: Sequence[LevelProgress], remaining: int, now: float
    ) -> tuple[float | None, float | None]:
        """(tokens/s of all levels, seconds left) at monotonic time `now`, `remaining` tokens of the
        job left. The job ends with its slowest level, and no sooner than all levels' rate allows
        (which drops once a level that sampled beside the others is done)."""
        rates = {}
        for progress in levels:
            rate = self._meters.setdefault(progress.level, _RateMeter()).add(now, progress.tokens_done)
            if rate and progress.tokens_done < progress.tokens_total:
                rates[progress.level] = rate
        if not rates:
            return None, None
        combined = sum(rates.values())
        seconds = max(
            remaining / combined,
            *((p.tokens_total - p.tokens_done) / rates[p.level] for p in levels if p.level in rates),
        )
        return combined, seconds


class _SignsOfLife:
    """When the runner last showed it was alive (`Worker._stall_loop` watches it), by time.monotonic;
    set from its thread (a float assignment: atomic)."""

    def __init__(self) -> None:
        self.alive_at = time.monotonic()

    def alive(self) -> None:
        self.alive_at = time.monotonic()


class _Run(_SignsOfLife):
    """State shared between the loop (heartbeats, writes) and the runner thread; its signs of life are a
    report, a checkpoint or a stop check (`runner_should_stop`)."""

    def __init__(self, job: ClaimedJob) -> None:
        super().__init__()
        self.job = job
        self._lock = threading.Lock()
        self._stop: StopReason | None = None
        self.latest: _Progress | None = None
        self.written: _Progress | None = None
        self.progress_ready = asyncio.Event()
        # set by the runner thread when it wakes the progress writer, cleared by the writer: one
        # wake-up per write instead of one per report
        self.progress_signalled = False
        # The runner reported more than loading models (or a checkpoint): what it made is the job's.
        self.past_loading = False
        # Released to the queue by the loop while the runner thread still loads models (`_stop_on`).
        self.released = False
        self.hung = False  # the watch gave up on the runner (`Worker._stall_loop`)

    def stop(self, reason: StopReason) -> None:
        with self._lock:
            if self._stop is None or _STOP_PRIORITY[reason] > _STOP_PRIORITY[self._stop]:
                self._stop = reason

    def should_stop(self) -> StopReason | None:
        return self._stop

    def runner_should_stop(self) -> StopReason | None:
        """`should_stop` as the runner asks it: each call is also a sign of life."""
        self.alive()
        return self._stop


Checkpoint = bytes | Callable[[], bytes]  # as `ProgressReporter.checkpoint` takes it


def _checkpoint_bytes(blob: Checkpoint) -> bytes:
    return blob() if callable(blob) else blob


class _Reporter:
    """The `ProgressReporter` handed to the runner; its methods run in the runner's thread."""

    def __init__(self, worker: Worker, run: _Run, loop: asyncio.AbstractEventLoop) -> None:
        self._worker, self._run, self._loop = worker, run, loop
        self._meter = _RateMeter()
        self._rate_key: tuple[str, int | None] | None = None
        self._level_timer = LevelTimer()
        self._pending: concurrent.futures.Future[None] | None = None
        self._held: Checkpoint | None = None  # the newest checkpoint, not sent yet (too soon after the last)
        self._sent_at = -math.inf
        self._interval = worker.config.checkpoint_seconds
        # The job's progress never goes backwards on screen: a run resumed from a checkpoint starts at
        # what the last attempt showed (its first reports, e.g. loading models, say 0 of 1 tokens),
        # and a retry inside the run does not drop below what this run showed.
        job = run.job
        resumed = job is not None and job.has_checkpoint and math.isfinite(job.progress)
        self._shown = job.progress if resumed else 0.0

    def _rate(self, stage: str, level: int | None, tokens_done: int, now: float) -> float | None:
        if self._rate_key != (stage, level):  # another model samples at another speed
            self._rate_key = (stage, level)
            self._meter = _RateMeter()
        return self._meter.add(now, tokens_done)

    def progress(
        self,
        stage: str,
        level: int | None,
        window: int | None,
        window_count: int | None,
        tokens_done: int,
        tokens_total: int,
        *,
        fraction: float | None = None,
        levels: Sequence[LevelProgress] = (),
    ) -> None:
        now = self._run.alive_at = time.monotonic()
        remaining = max(tokens_total - tokens_done, 0)
        if levels:
            rate, seconds = self._level_timer.estimate(levels, remaining, now)
        else:
            rate = self._rate(stage, level, tokens_done, now)
            seconds = remaining / rate if rate else None
        eta = datetime.now(UTC) + timedelta(seconds=seconds) if seconds is not None else None
        if fraction is None:
            fraction = tokens_done / tokens_total if tokens_total > 0 else 0.0
        if math.isfinite(fraction):
            fraction = self._shown = max(fraction, self._shown)
        sampling = tuple(LevelWindow(p.level, p.window, p.window_count) for p in levels if p.sampling)
        run = self._run
        if stage != Stage.LOADING:
            run.past_loading = True
        run.latest = _Progress(
            stage, fraction, level, window, window_count, tokens_done, tokens_total, rate, eta, sampling
        )
        if not run.progress_signalled:  # after `latest` is set: the writer clears the flag before reading it
            run.progress_signalled = True
            self._loop.call_soon_threadsafe(run.progress_ready.set)
        if self._held is not None and time.monotonic() - self._sent_at >= self._interval:
            self._send(self._held)  # a held checkpoint is due: store it without waiting for the next window

    def checkpoint(self, blob: Checkpoint) -> None:
        self._run.past_loading = True
        self._run.alive()
        # Stored in the background while the next window samples; the previous checkpoint must be
        # stored before this one is sent, so at most the window in progress is ever unsaved (plus
        # `checkpoint_seconds` when windows come faster than that).
        if time.monotonic() - self._sent_at < self._interval:
            self._held = blob
            return
        self._send(blob)

    def _send(self, blob: Checkpoint) -> None:
        if not self._previous_stored():
            # The database is away: sampling goes on; only the newest checkpoint is kept (in memory)
            # and it is stored once the one being retried is in.
            self._held = blob
            return
        self._held = None
        self._sent_at = time.monotonic()
        data = _checkpoint_bytes(blob)
        self._pending = asyncio.run_coroutine_threadsafe(
            self._worker._save_checkpoint(self._run, data), self._loop
        )

    def _previous_stored(self) -> bool:
        """Wait until the checkpoint being stored is in; False at once while the database is away."""
        future = self._pending
        while future is not None:
            if self._worker.database_away and not future.done():
                return False
            try:
                future.result(timeout=0.2)
                break
            except concurrent.futures.TimeoutError:
                # waiting on the database (a full disk, a lock held elsewhere) is no hang of the runner's
                self._run.alive()
                # a loop that stopped (the worker is going away) never stores it: do not wait forever
                if self._loop.is_closed() or not self._loop.is_running():
                    future.cancel()
                    raise JobInterrupted("the worker stopped before the checkpoint was stored") from None
        self._pending = None
        return True

    async def flush(self) -> None:
        """Wait for the checkpoint being stored, then store the one held back, if any (call on the
        loop once a run stopped before its end, so that the next attempt resumes from there)."""
        future, self._pending = self._pending, None
        if future is not None:
            await asyncio.wrap_future(future)
        held, self._held = self._held, None
        if held is not None:
            await self._worker._save_checkpoint(self._run, _checkpoint_bytes(held))

    async def drop_pending(self, job_id: int) -> None:
        """The run has finished: its samples hold the codes, so no checkpoint is needed any more. The
        one being stored is stopped, not waited for: a store too slow for it (`StoreCallTooSlow`) must
        not cost the finished samples."""
        future, self._pending, self._held = self._pending, None, None
        if future is None:
            return
        future.cancel()
        wrapped = asyncio.wrap_future(future)
        await asyncio.wait([wrapped])
        if not wrapped.cancelled() and wrapped.exception() is not None:
            log.info(
                "job #%s: its last checkpoint was not stored (%s); not needed", job_id, wrapped.exception()
            )


class StoreCallTooSlow(Exception):
    """One store call failed as if the database were away, try after try, while the database
    answered this worker's other calls: too big for the link, or for a statement time limit the
    database sets. Raised (the job crashes and goes back to the queue) rather than tried forever."""


# Tries of such a call, each given twice the time of the one before.
SLOW_CALL_TRIES = 3


class _Superseded(TimeoutError):
    """A store call that waited through an outage was cut short: the database answers other calls."""


class LeftToLease(Exception):
    """The worker is stopping (a stop signal, or its pool is gone) and the database stayed unreachable
    until the job's lease ran out: what it was storing is given up, and the worker exits (freeing its
    device) instead of trying for ever. Past the lease the job is no longer the worker's to end: it
    goes back to the queue once the database is back, from its last stored checkpoint."""


# ----------------------------------------------------------------------------- the worker


class Worker:
    """Claims and runs jobs for one runner on one device until `stop` is set."""

    def __init__(
        self,
        store: JobStore,
        runner: JobRunner,
        device: DeviceSpec,
        *,
        config: WorkerConfig | None = None,
        worker_id: str | None = None,
        state: WorkerState | None = None,
    ) -> None:
        self.store, self.runner, self.device = store, runner, device
        self.state = state  # shared with the pool, which reads it when this process dies
        self.warmed_up = False  # the warm-up is over (or there was none): claiming jobs
        self.running_job: int | None = None  # the id of the job `serve` runs now
        self._crash_streak = 0  # jobs that crashed one after another (the claim backoff grows with it)
        self.runner_hung = False  # its runner thread hangs (`RunnerHung`): the process must not wait on it
        self.config = config or WorkerConfig()
        self.worker_id = worker_id or make_worker_id(device)
        # One thread for every run: CUDA state and model caches stay on one thread.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"runner-{device}")
        self._served: frozenset[str] | None = None  # as last logged
        self._recorded: frozenset[str] | None = None  # as the workers table has it
        self._recorded_at = -math.inf
        # Set while database calls fail for want of a database (read by the runner thread too).
        self.database_away = False
        # A SQLite file does not go silent, and its writers legitimately wait for one another (the
        # busy timeout): its calls are not cut short.
        self._calls_bounded = store.engine.dialect.name != "sqlite"
        # The time limits of `_until_stored` tries in flight: True for those that were in flight when
        # the database was found away (probably waiting on a connection that went silent).
        self._tries: dict[asyncio.Timeout, bool] = {}
        self._superseded: set[asyncio.Timeout] = set()
        self._predecessors_checked_at = -math.inf
        self._predecessors_settled: set[str] = set()  # gone ones whose jobs were seen to (said once)
        # A claim failed: it may have been committed with only its answer lost (see `serve`).
        self._claim_unanswered = False
        self._answered = 0  # store calls answered so far (`_until_stored` tells a slow call from an outage)
        self._stop: asyncio.Event | None = None  # set once the worker is stopping (`serve`, `run_job`)
        # The database's schema revisions this jukebot does not know, once found (a newer jukebot
        # migrated it meanwhile): the worker stops, and is not restarted.
        self.schema_not_ours: list[str] = []
        # When the running job's lease was last renewed, as far as this worker knows (the loop's clock,
        # once the claim or heartbeat was answered: the lease surely runs out a lease after it).
        self._renewed_at = -math.inf

    # ---------------------------------------------------------------- database outages

    def _database_failed(self, what: str, exc: BaseException) -> bool:
        """Note a failed store call; True when the database was unreachable (worth trying again)."""
        if not database_unreachable(exc):
            return False
        self._tries = dict.fromkeys(self._tries, True)
        if not self.database_away:
            self.database_away = True
            then = (
                "the worker is stopping: it waits for the database until its job's lease runs out"
                if self._lease_end_if_stopping() is not None
                else "a running job goes on, and what it reports is kept and stored once the database is back"
            )
            log.warning(
                "worker %s: the database is unreachable (%s: %s); %s",
                self.worker_id,
                what,
                _last_line(exc),
                then,
            )
        return True

    def _database_back(self) -> None:
        if self.database_away:
            self.database_away = False
            log.warning("worker %s: the database is reachable again", self.worker_id)
            # Tries that waited through the outage are cut short now, not at their time limit (a
            # checkpoint's is a whole lease, while the runner waits for it): they try again at once.
            now = asyncio.get_running_loop().time()
            for limit, hung in self._tries.items():
                if hung and not limit.expired():
                    self._superseded.add(limit)
                    limit.reschedule(now)

    async def _call(
        self,
        call: Awaitable[T],
        *,
        bulk: bool = False,
        tracked: bool = False,
        patience: float = 1.0,
        until: float | None = None,
    ) -> T:
        """One try of a store call, given up after `call_seconds` (`bulk_call_seconds` with `bulk`;
        times `patience`) with a TimeoutError, which counts as the database being away
        (`database_unreachable`). The call is cancelled mid-way, so the connection it hung on is
        invalidated, never reused. A `tracked` try in flight through an outage raises `_Superseded`
        once the database is back. `until` (the loop's clock) ends the try sooner, but leaves it at
        least `call_seconds`."""
        if not self._calls_bounded:
            result = await call
            self._answered += 1
            return result
        seconds = (self.config.bulk_call_seconds if bulk else self.config.call_seconds) * patience
        if until is not None:
            left = until - asyncio.get_running_loop().time()
            seconds = min(seconds, max(left, self.config.call_seconds))
        limit = asyncio.timeout(seconds)
        if tracked:
            self._tries[limit] = False
        try:
            async with limit:
                result = await call
            self._answered += 1
            return result
        except TimeoutError as exc:
            if not limit.expired():
                raise  # the driver's own time limit (storage.engine)
            if limit in self._superseded:
                raise _Superseded("the database is back; trying again on a new connection") from exc
            raise TimeoutError(f"the database did not answer within {seconds:g} s") from exc
        finally:
            self._tries.pop(limit, None)
            self._superseded.discard(limit)

    def _pause(self, failures: int) -> float:
        return doubling_delay(0.25, failures, self.config.retry_max_seconds)

    async def _until_stored(
        self, what: str, call: Callable[[], Awaitable[T]], tries: int = 1, *, bulk: bool = False
    ) -> T:
        """Make one store call, trying again while the database is unreachable, for as long as that
        lasts (only the database can say the job is no longer ours: `LeaseLost` ends it). Other
        errors are raised after `tries` tries. Each try is bounded in time (`_call`); a call that
        fails as in an outage while the database answers other calls is given more time, and raised
        as `StoreCallTooSlow` after `SLOW_CALL_TRIES` such tries.

        Once the worker is stopping, an outage is waited out only until the job's lease has run out
        (`LeftToLease`): nobody would ever stop a worker whose pool is gone, and past its lease the
        job is no longer this worker's to end."""
        outages = errors = slow = 0
        stopping_since: float | None = None
        answered_before = self._answered  # calls the database answered before this one's first try
        while True:
            answered = self._answered
            try:
                result = await self._call(
                    call(), bulk=bulk, tracked=True, patience=2.0**slow, until=self._lease_end_if_stopping()
                )
            except StorageError:
                raise
            except _Superseded:
                continue
            except Exception as exc:
                outage = outage_of(exc)
                if outage in (Outage.DISK_FULL, Outage.BUSY) and self._answered > answered_before:
                    # The database takes small calls (heartbeats, since this call's first try) but not this
                    # one for now: no room for its megabytes, or another process holds SQLite's lock
                    # (either refused at once, or after a while). Waited out as an outage is,
                    # never given up as too slow: that requeued the job and dropped what it had made.
                    # A worker told to stop waits a lease at most, then leaves the job to its lease.
                    outages += 1
                    if outages == 1:
                        log.warning(
                            "%s waits: %s (%s); the job keeps what it made and tries again",
                            what,
                            outage.value,
                            _last_line(exc),
                        )
                    now = asyncio.get_running_loop().time()
                    if self._stop is not None and self._stop.is_set():
                        stopping_since = now if stopping_since is None else stopping_since
                        if now - stopping_since >= self.config.lease_seconds:
                            raise LeftToLease(
                                f"{what} is given up: the worker is stopping and {outage.value} "
                                f"({_last_line(exc)}) for a lease of {self.config.lease_seconds:g} s"
                            ) from exc
                elif database_unreachable(exc) and self._answered > answered:
                    # Not an outage: heartbeats got through meanwhile. Most likely megabytes over a slow
                    # link, which the same limit would cut short forever while the lease is renewed.
                    slow += 1
                    if slow >= SLOW_CALL_TRIES:
                        raise StoreCallTooSlow(
                            f"{what} failed {slow} times in a row ({_last_line(exc)}) while the database "
                            "answered other calls: too slow a link, or a statement time limit, for it"
                        ) from exc
                    log.warning(
                        "%s failed while the database answers (%s); trying with more time",
                        what,
                        _last_line(exc),
                    )
                elif self._database_failed(what, exc):
                    outages += 1
                    self._give_up_past_the_lease(what, exc)
                else:
                    errors += 1
                    if errors >= tries:
                        raise
                    log.exception("%s failed (try %d); retrying", what, errors)
                pause = self._pause(outages + errors)
                lease_end = self._lease_end_if_stopping()
                if lease_end is not None:  # wake for a last try as the lease runs out
                    pause = max(min(pause, lease_end - asyncio.get_running_loop().time()), 0.0)
                await asyncio.sleep(pause)
                continue
            self._database_back()
            return result

    def _lease_end_if_stopping(self) -> float | None:
        """While the worker stops with the database away: when (the loop's clock) the running job's
        lease has surely run out. None otherwise: a database that only answers slowly (heartbeats get
        through, renewing the lease) gets the time it needs, as when not stopping."""
        if self._stop is None or not self._stop.is_set() or not self.database_away:
            return None
        return self._renewed_at + self.config.lease_seconds

    def _give_up_past_the_lease(self, what: str, exc: BaseException) -> None:
        """Raise `LeftToLease` when the worker is stopping and the job's lease has run out."""
        lease_end = self._lease_end_if_stopping()
        if lease_end is None or asyncio.get_running_loop().time() < lease_end:
            return
        raise LeftToLease(
            f"{what} is given up: the worker is stopping and the database has been unreachable "
            f"({_last_line(exc)}) until the job's lease of {self.config.lease_seconds:g} s ran out"
        ) from exc

    def close(self) -> None:
        # A hung runner thread never ends: waiting for it would hang the process's exit too.
        self._executor.shutdown(wait=not self.runner_hung)

    # ---------------------------------------------------------------- the loop

    async def serve(self, stop: asyncio.Event) -> None:
        """Claim and run jobs until `stop` is set; a running job is then released to the queue."""
        self._stop = stop
        requeuer = asyncio.create_task(self._requeue_loop(stop))
        presence = asyncio.create_task(self._presence_loop(stop))
        idle_wait = self.config.poll_seconds
        log.debug("worker %s timings: %s", self.worker_id, self.config)
        try:
            await self.advertise()  # queued jobs wait for this worker while it warms up
            await self._warn_if_the_gpu_is_shared()
            await self._warm_up()
            self._serving()
            while not stop.is_set():
                # Only models complete on disk, re-read each time: a download that finishes is served
                # at once, and a job another machine could run is never claimed (and failed) here.
                models = await self.advertise()
                try:
                    orphaned_by = await self._gone_predecessors()
                    job = await self._call(
                        # The checkpoint comes later, under the bulk time limit (`_task_for`): read in the
                        # claim, megabytes over a slow link outlasted the claim's limit at every try,
                        # and no job behind it was ever claimed.
                        self.store.claim(
                            self.worker_id,
                            models,
                            self.config.lease_seconds,
                            orphaned_by=orphaned_by,
                            with_checkpoint=False,
                            reclaim_own=self._claim_unanswered,
                        )
                    )
                    self._claim_unanswered = False
                    self._database_back()
                except Exception as exc:
                    # A claim committed whose answer was lost (the connection dropped, the call timed out)
                    # left a job running under this worker's id, which nobody would run until its lease
                    # ran out (at the cost of an attempt): the next claim takes it back.
                    self._claim_unanswered = True
                    if not self._database_failed("claiming a job", exc):
                        log.exception("worker %s: claiming a job failed; retrying", self.worker_id)
                    job = None
                if job is None:
                    await _wait(stop, idle_wait)
                    idle_wait = min(idle_wait * 2, self.config.max_poll_seconds)
                    continue
                idle_wait = self.config.poll_seconds
                crashes = self._crash_streak
                # `claim` takes over a dead worker's job only while attempts + 1 < max_attempts.
                self._running(job.id, last_attempt=job.attempts + 1 >= job.max_attempts)
                try:
                    await self.run_job(job, stop)
                except (DeviceContextLost, RunnerHung):
                    raise  # the job's crash is recorded: this process can run no more
                except Exception:  # e.g. the database went away while recording the end
                    log.exception("job #%s: recording its outcome failed; its lease will expire", job.id)
                    await _wait(stop, self.config.max_poll_seconds)
                finally:
                    self._running(None)
                if self._crash_streak > crashes:
                    await self._back_off_after_crash(stop)
                else:
                    self._crash_streak = 0
        finally:
            for helper in (requeuer, presence):
                helper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await helper
            with contextlib.suppress(Exception):
                await self._call(self.store.forget_worker(self.worker_id))
        log.info("worker %s stopped", self.worker_id)

    def _serving(self) -> None:
        self.warmed_up = True
        if self.state is not None:
            self.state[STATE_SERVING] = 1

    def _running(self, job_id: int | None, *, last_attempt: bool = False) -> None:
        self.running_job = job_id
        if self.state is not None:
            self.state[STATE_LAST_ATTEMPT] = int(last_attempt)
            self.state[STATE_JOB] = job_id or 0

    async def _back_off_after_crash(self, stop: asyncio.Event) -> None:
        """Wait before the next claim after a crash: the same job (queued again) or the next one would
        otherwise be claimed at once, and a crash that repeats would use up every queued job's
        attempts within a second. Meanwhile another worker may take the job."""
        streak = self._crash_streak
        delay = doubling_delay(
            self.config.crash_backoff_seconds, streak, self.config.max_crash_backoff_seconds
        )
        log.warning(
            "worker %s: %s; waiting %.1f s before claiming again",
            self.worker_id,
            "a job crashed" if streak == 1 else f"{streak} jobs crashed in a row",
            delay,
        )
        await _wait(stop, delay)

    async def _warm_up(self) -> None:
        """Let the runner prepare itself (in its thread) before the first claim.

        A failure is logged and the worker serves anyway (jobs load what they need), except one that
        says the device itself cannot run (`_device_unusable`: no CUDA in this torch build, no such GPU,
        a GPU held by another process in exclusive mode, a broken driver): every job would fail the
        same way, so the worker raises `DeviceUnusable` and claims nothing. Anything else may well
        not recur in a job: running out of memory while loading every prior at once (jobs load one
        level at a time, or sample smaller batches), one model's damaged file (jobs of the other
        models run; a job of that model fails with what to fetch), a bug in an optional step.

        A warm-up silent for `stall_seconds` (between two of its signs of life, `WarmsUp`) hangs
        (`RunnerHung`): the worker said it serves its models before warming up, so jobs would wait for
        it forever."""
        if not isinstance(self.runner, WarmsUp):
            return
        started = time.monotonic()
        log.info("worker %s: warming up its runner", self.worker_id)
        signs = _SignsOfLife()
        warmed = self._executor.submit(self.runner.warm_up, signs.alive)
        warming = asyncio.wrap_future(warmed)
        watch = asyncio.create_task(self._stall_loop(signs))
        try:  # (not wait_for: a TimeoutError of the warm-up's own, a download's, is no hang)
            await asyncio.wait({warming, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            # (read from `warmed` below: asyncio would log the copy's error as never retrieved)
            warming.cancel()
        if not warmed.done():  # (the thread's future: a warm-up that ended as the watch fired is no hang)
            self._give_up_on_runner()
            raise RunnerHung(
                f"warming up its runner showed no sign of life for {self.config.stall_seconds:g} s "
                "(JUKEBOT_WORKER_STALL_SECONDS): it hangs (a GPU that stopped answering, or a deadlock); "
                "this process can run no jobs"
            )
        try:
            warmed.result()  # its own error, if any
        except Exception as exc:
            if _device_unusable(exc):
                raise DeviceUnusable(
                    f"{self.device} cannot run jobs: warming up its runner failed with "
                    f"{_last_line(exc)}, which every job on it would hit too"
                ) from exc
            log.exception(
                "worker %s: warming up failed after %.1f s; serving anyway (jobs load what they need)",
                self.worker_id,
                time.monotonic() - started,
            )
            return
        log.info("worker %s: runner warmed up in %.1f s", self.worker_id, time.monotonic() - started)

    async def advertise(self) -> frozenset[str]:
        """The models this worker serves now; the workers table learns of a change at once, and is told
        again every WORKER_PRESENCE_SECONDS that this worker is alive."""
        models = frozenset(self.runner.models)
        if models != self._served:
            self._served = models
            if models:
                log.info("worker %s serving models %s", self.worker_id, ", ".join(sorted(models)))
            else:
                log.warning(
                    "worker %s serves no model: its runner has none it can run now (files missing or found "
                    "unusable, or too big for its device: its log says which); it claims no job until it "
                    "has one (`jukebot models list` shows what is missing)",
                    self.worker_id,
                )
        if models != self._recorded or time.monotonic() - self._recorded_at >= WORKER_PRESENCE_SECONDS:
            try:
                await self._call(self.store.record_worker(self.worker_id, models))
            except Exception as exc:
                if not self._database_failed("recording the models it serves", exc):
                    log.exception(
                        "worker %s: recording the models it serves failed; retrying", self.worker_id
                    )
            else:
                self._recorded, self._recorded_at = models, time.monotonic()
        return models

    async def _warn_if_the_gpu_is_shared(self) -> None:
        """Say so when another worker on this machine runs on this GPU (`jukebot worker` started twice,
        or beside `jukebot run`'s workers): its jobs would run out of memory, or at half speed, and
        fail saying to lower a setting. Once, at start; CPU workers share cores by design."""
        if not self.device.is_cuda:
            return
        try:
            live = await self._call(self.store.live_workers())
        except Exception as exc:
            if not self._database_failed("looking for other workers on this GPU", exc):
                log.exception("worker %s: looking for other workers on this GPU failed", self.worker_id)
            return
        sharers = [str(pid_of(other)) for other in live if shares_my_device(self.worker_id, other)]
        if sharers:
            log.warning(
                "worker %s: another worker on this machine runs on %s too (pid %s): workers on one GPU "
                "share its memory and time, so jobs may run out of memory or run at a fraction of the "
                "speed; stop the extra worker, or give each worker a GPU of its own (JUKEBOT_GPUS)",
                self.worker_id,
                self.device,
                ", ".join(sharers),
            )

    async def _presence_loop(self, stop: asyncio.Event) -> None:
        """Keeps the workers table fresh through jobs that run for hours (the claim loop waits on them)."""
        while not stop.is_set():
            await _wait(stop, WORKER_PRESENCE_SECONDS)
            if not stop.is_set():
                await self.advertise()

    async def _gone_predecessors(self) -> list[str]:
        """Lease owners that were workers on this machine and device and have exited (looked for
        before the first claim, then every `requeue_seconds`)."""
        if time.monotonic() - self._predecessors_checked_at < self.config.requeue_seconds:
            return []
        owners = await self._call(self.store.active_lease_owners())
        self._predecessors_checked_at = time.monotonic()
        gone = [owner for owner in owners if predecessor_is_gone(self.worker_id, owner)]
        new = [owner for owner in gone if owner not in self._predecessors_settled]
        if new:
            await self._settle_predecessors(new)
            self._predecessors_settled.update(new)
        return gone

    async def _settle_predecessors(self, gone: Sequence[str]) -> None:
        """Say what becomes of the jobs gone predecessors held (once each), and end a job that was being
        cancelled: its worker is known dead, so nobody would run it before its lease ran out."""
        for job in await self._call(self.store.running_jobs()):
            owner = job.lease_owner
            if owner is None or owner not in gone:
                continue
            if job.status is JobStatus.CANCELLING:
                try:
                    await self._call(self.store.mark_cancelled(job.id, owner))
                except LeaseLost:  # another worker (or the scan) ended it meanwhile
                    continue
                log.info(
                    "worker %s: %s exited while job #%s was being cancelled; it is cancelled now",
                    self.worker_id,
                    owner,
                    job.id,
                )
            elif job.attempts + 1 < job.max_attempts:  # what `claim` takes over (`orphaned_by`)
                log.warning(
                    "worker %s: %s exited holding a job; resuming it now (job #%s)",
                    self.worker_id,
                    owner,
                    job.id,
                )
            else:
                log.warning(
                    "worker %s: %s exited holding job #%s, which has no attempts left; it fails a lease "
                    "after its lease is seen run out",
                    self.worker_id,
                    owner,
                    job.id,
                )

    async def _requeue_loop(self, stop: asyncio.Event) -> None:
        # Claims take jobs whose lease ran out; this scan fails jobs out of attempts, cancels the ones
        # being cancelled, and puts back in the queue those of models no worker here serves.
        while not stop.is_set():
            try:
                if self.database_away:  # found back by this scan's call, or another
                    await self._call(self.store.served_models())
                    self._database_back()
                # A lease that ran out while the database was away is left to its worker for a lease
                # more (the store's rule): it renews it, and stores what it did, once it sees it back.
                recovered = await self._call(self.store.requeue_expired(spare_job=self.running_job))
                for job_id, status in recovered:
                    log.warning("job #%s: its worker stopped heartbeating; now %s", job_id, status.value)
                if await self._schema_moved_on():
                    stop.set()
                    return
            except Exception as exc:
                if not self._database_failed("recovering expired leases", exc):
                    log.exception("worker %s: recovering expired leases failed", self.worker_id)
            await _wait(stop, self.config.requeue_seconds)

    async def _schema_moved_on(self) -> bool:
        """Whether a newer jukebot migrated the database since this worker started: its claims would
        ignore what the new schema holds (a newer limit, a newer kind of job), so it stops, its job back
        in the queue for a worker of that version (its own restart refuses the database, saying so)."""
        from storage.migrate import why_schema_not_ours  # (loaded already: the store's read imports it)

        self.schema_not_ours = await self._call(self.store.schema_revisions_not_ours())
        if not self.schema_not_ours:
            return False
        log.error(
            "worker %s stops: %s%s",
            self.worker_id,
            why_schema_not_ours(self.schema_not_ours),
            f"; job #{self.running_job} goes back to the queue" if self.running_job is not None else "",
        )
        return True

    # ---------------------------------------------------------------- one job

    async def run_job(self, job: ClaimedJob, stop: asyncio.Event | None = None) -> JobOutcome:
        """Run one claimed job to its end and record how it ended; returns a `JobOutcome`."""
        run = _Run(job)
        if stop is not None:
            self._stop = stop
        self._renewed_at = asyncio.get_running_loop().time()  # the claim was answered before this
        log.info(
            "job #%s (%s, %s) claimed by %s, attempt %s%s",
            job.id,
            job.kind.value,
            job.model,
            self.worker_id,
            job.attempts + 1,
            ", resuming from a checkpoint" if job.has_checkpoint else "",
        )
        helpers = [
            asyncio.create_task(self._heartbeat_loop(run)),
            asyncio.create_task(self._cancel_loop(run)),
            asyncio.create_task(self._progress_loop(run)),
        ]
        if stop is not None:
            helpers.append(asyncio.create_task(self._stop_on(stop, run)))
        try:
            return await self._run_and_record(run)
        except _RunnerSilent:
            return await self._hung(run)
        finally:
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def _run_and_record(self, run: _Run) -> JobOutcome:
        job = run.job
        try:
            try:
                task = await self._until_stored(
                    f"job #{job.id}: reading its inputs", lambda: self._task_for(job), bulk=True
                )
                loop = asyncio.get_running_loop()
                reporter = _Reporter(self, run, loop)
                finished = False
                run.alive()
                ran = self._executor.submit(self.runner.run, task, reporter, run.runner_should_stop)
                news = asyncio.wrap_future(ran)
                watchdog = asyncio.create_task(self._stall_loop(run))
                try:
                    await asyncio.wait((news, watchdog), return_when=asyncio.FIRST_COMPLETED)
                    # The thread's own future, not the loop's news of it: a runner that returned
                    # as the watch fired keeps its samples.
                    if not ran.done():
                        run.hung = True
                        self._give_up_on_runner()  # (whatever follows: an outside cancel, a flush)
                        raise _RunnerSilent
                    samples = ran.result()
                    finished = True
                finally:
                    watchdog.cancel()
                    news.cancel()  # (a hung thread's late news then goes nowhere)
                    if finished:
                        await reporter.drop_pending(job.id)
                    elif run.hung:  # an error storing the last checkpoint must not hide the hang
                        try:
                            await reporter.flush()
                        except Exception as exc:
                            log.warning("job #%s: its last checkpoint was not stored: %r", job.id, exc)
                    else:
                        await reporter.flush()
            except (LeaseLost, LeftToLease, _RunnerSilent):
                raise
            except JobCancelled:
                if run.should_stop() is StopReason.LEASE_LOST:
                    return self._abandoned(job)
                await self._flush_progress(run)
                await self._until_stored(
                    f"job #{job.id}: recording the cancel",
                    lambda: self.store.mark_cancelled(job.id, self.worker_id),
                )
                log.info("job #%s cancelled", job.id)
                return JobOutcome.CANCELLED
            except JobInterrupted as exc:
                if run.released:  # while its models loaded
                    return JobOutcome.RELEASED
                if run.should_stop() is StopReason.LEASE_LOST:
                    return self._abandoned(job)
                if isinstance(exc, ModelNotHere):
                    log.warning("job #%s: %s", job.id, exc)
                await self._flush_progress(run)
                status = await self._until_stored(
                    f"job #{job.id}: releasing it", lambda: self.store.release(job.id, self.worker_id)
                )
                log.info("job #%s released (%s); it resumes from its checkpoint", job.id, status.value)
                return JobOutcome.CANCELLED if status is JobStatus.CANCELLED else JobOutcome.RELEASED
            except (JobFailed, SampleNotFound, PrimeNotFound) as exc:
                return await self._fail(run, str(exc))
            except JobDidNotFit as exc:  # another worker may run it: back to the queue, an attempt counted
                return await self._crashed(run, exc, expected=True)
            except Exception as exc:
                if run.released:  # the job is the queue's already: a crash of this run is no news to it
                    log.warning("job #%s: its runner crashed after the job was released: %r", job.id, exc)
                    return JobOutcome.RELEASED
                if run.should_stop() is StopReason.LEASE_LOST:
                    return self._abandoned(job)
                if is_out_of_memory(exc):
                    return await self._fail(run, str(OutOfMemory(self.device, detail=_last_line(exc))))
                return await self._crashed(run, exc)
            if run.should_stop() is StopReason.LEASE_LOST:
                return self._abandoned(job)
            try:
                await self._until_stored(
                    f"job #{job.id}: storing its samples",
                    lambda: self.store.complete(job.id, self.worker_id, samples),
                    bulk=True,
                )
            except InvalidSample as exc:  # a runner bug: the same run would produce it again
                return await self._fail(run, f"The sampler produced an invalid result: {exc}")
            except StoreCallTooSlow as exc:  # the samples do not fit the link: back to the queue, saying why
                return await self._crashed(run, exc)
            log.info("job #%s succeeded with %d samples", job.id, len(samples))
            return JobOutcome.SUCCEEDED
        except LeaseLost as exc:
            log.warning("%s", exc)
            return self._abandoned(job)
        except LeftToLease as exc:
            log.warning(
                "%s; worker %s leaves job #%s to its lease and exits, freeing its device. What it had "
                "not stored is lost, as with a killed worker: the job goes back to the queue once its "
                "lease ran out and resumes from its last stored checkpoint",
                exc,
                self.worker_id,
                job.id,
            )
            return JobOutcome.LEFT_TO_LEASE

    def _abandoned(self, job: ClaimedJob) -> JobOutcome:
        log.warning("job #%s: lease lost; %s drops it without writing results", job.id, self.worker_id)
        return JobOutcome.ABANDONED

    async def _task_for(self, job: ClaimedJob) -> JobTask:
        parent = None if job.parent_sample_id is None else await self.store.get_sample(job.parent_sample_id)
        prime = None if job.prime_id is None else await self.store.get_prime(job.prime_id)
        checkpoint = job.checkpoint
        if checkpoint is None and job.has_checkpoint:
            checkpoint = await self.store.get_checkpoint(job.id)  # ours now: only we write it
        return JobTask(job=job, checkpoint=checkpoint, parent=parent, prime=prime)

    async def _fail(self, run: _Run, reason: str) -> JobOutcome:
        await self._flush_progress(run)
        await self._until_stored(
            f"job #{run.job.id}: recording its failure",
            lambda: self.store.fail(run.job.id, self.worker_id, reason),
        )
        log.warning("job #%s failed: %s", run.job.id, reason)
        return JobOutcome.FAILED

    async def _crashed(self, run: _Run, exc: BaseException, *, expected: bool = False) -> JobOutcome:
        """Back to the queue with an attempt counted (out of attempts: failed). `expected`: a failure the
        runner foresaw and worded (`JobDidNotFit`), logged without a traceback."""
        if expected:  # (the runner pauses what it foresaw: no need to wait before the next claim)
            log.warning("job #%s: %s", run.job.id, exc)
        else:
            self._crash_streak += 1  # `serve` waits before its next claim
            log.error(
                "job #%s: the runner crashed\n%s",
                run.job.id,
                "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            )
        await self._flush_progress(run)
        reason = str(exc) if expected else _last_line(exc)
        status = await self._until_stored(
            f"job #{run.job.id}: recording the crash",
            lambda: self.store.retry(run.job.id, self.worker_id, reason),
        )
        log.warning("job #%s: %s after a crash (%s)", run.job.id, status.value, reason)
        if _device_context_lost(exc):
            raise DeviceContextLost(
                f"{self.device}'s CUDA context is broken ({reason}): this process can run no more jobs"
            ) from exc
        return JobOutcome.RETRYING if status is JobStatus.QUEUED else JobOutcome(status.value)

    # ---------------------------------------------------------------- helpers running beside the runner

    async def _stop_on(self, stop: asyncio.Event, run: _Run) -> None:
        """Ask the runner to stop once the worker stops. A runner still loading models (minutes for a 5B
        prior, with no point to stop at) would outlast the pool's shutdown timeout and be killed, the job
        held until its lease ran out and then costing an attempt: it has made nothing yet in this run,
        so the job goes back to the queue now; the runner stops once loaded."""
        await stop.wait()
        run.stop(StopReason.SHUTDOWN)
        if run.latest is None or run.latest.stage != Stage.LOADING or run.past_loading:
            return
        try:
            status = await self._call(self.store.release(run.job.id, self.worker_id))
        except LeaseLost:
            return
        except Exception as exc:  # the runner's own stop releases it, if the pool waits for it
            log.warning("job #%s: could not release it while its models load: %r", run.job.id, exc)
            return
        run.released = True
        log.info(
            "job #%s released (%s) while its runner loads models; the worker stops once they are loaded",
            run.job.id,
            status.value,
        )

    async def _stall_loop(self, signs: _SignsOfLife) -> None:
        """Return once the runner has been silent for `stall_seconds`: unless it has returned by then,
        it hangs (a job is recorded as crashed, `_hung`)."""
        limit = self.config.stall_seconds
        while True:
            silent = time.monotonic() - signs.alive_at
            if silent >= limit:
                return
            await asyncio.sleep(min(limit - silent, 30.0) + 0.01)

    async def _hung(self, run: _Run) -> JobOutcome:
        stage = "before its first report" if run.latest is None else f"while {run.latest.stage}"
        silent = time.monotonic() - run.alive_at
        # (the runtime imports only itself and storage: not sampler.units' format_duration)
        how_long = f"{silent:.0f} s" if silent < 120 else f"{silent / 60:.0f} min"
        reason = (
            f"the sampler showed no sign of life for {how_long} {stage} (a GPU that stopped "
            "answering, or a deadlock); its worker process stops so that a fresh one can take over"
        )
        log.error("job #%s: %s", run.job.id, reason)
        # Whatever happens to the record, this process stops (given up as the watch fired): its only
        # runner thread is taken.
        if not run.released and run.should_stop() is not StopReason.LEASE_LOST:  # still this worker's
            try:
                await self._flush_progress(run)
                status = await self._until_stored(
                    f"job #{run.job.id}: recording that its sampler hangs",
                    lambda: self.store.retry(run.job.id, self.worker_id, reason),
                )
                log.warning("job #%s: %s after its sampler hung", run.job.id, status.value)
            except Exception as exc:  # (its lease runs out, and it comes back as any such job)
                log.warning("job #%s: could not record that its sampler hangs: %r", run.job.id, exc)
        raise RunnerHung(f"its sampler thread hangs (job #{run.job.id}): this process can run no more jobs")

    def _give_up_on_runner(self) -> None:
        self.runner_hung = True
        _RUNNER_THREAD_HANGS.set()

    async def _heartbeat_loop(self, run: _Run) -> None:
        failures = 0
        while True:
            # after a failure, try again sooner: the lease must be renewed as soon as the database is back
            wait = self.config.heartbeat_seconds
            await asyncio.sleep(min(wait, self._pause(failures)) if failures else wait)
            if run.released:
                return  # the job is the queue's again
            try:
                beat = await self._call(
                    self.store.heartbeat(run.job.id, self.worker_id, self.config.lease_seconds)
                )
            except LeaseLost as exc:
                log.warning("%s", exc)
                run.stop(StopReason.LEASE_LOST)
                return
            except Exception as exc:
                failures += 1
                if not self._database_failed(f"job #{run.job.id}: heartbeat", exc):
                    log.exception("job #%s: heartbeat failed; trying again", run.job.id)
                continue
            failures = 0
            self._renewed_at = asyncio.get_running_loop().time()
            self._database_back()
            if beat.cancel_requested:
                run.stop(StopReason.CANCEL)

    async def _cancel_loop(self, run: _Run) -> None:
        while True:
            await asyncio.sleep(self.config.cancel_poll_seconds)
            try:
                if await self._call(self.store.is_cancel_requested(run.job.id)):
                    run.stop(StopReason.CANCEL)
            except Exception as exc:
                if not self._database_failed(f"job #{run.job.id}: checking for a cancel", exc):
                    log.exception("job #%s: checking for a cancel request failed", run.job.id)

    async def _progress_loop(self, run: _Run) -> None:
        while True:
            await run.progress_ready.wait()
            run.progress_ready.clear()
            run.progress_signalled = False
            await self._flush_progress(run)
            await asyncio.sleep(self.config.progress_seconds)  # the throttle

    async def _flush_progress(self, run: _Run) -> None:
        latest = run.latest
        if latest is None or latest is run.written or run.released:
            return
        try:
            await self._call(
                self.store.report_progress(
                    run.job.id,
                    self.worker_id,
                    stage=latest.stage,
                    progress=latest.fraction,
                    level=latest.level,
                    window=latest.window,
                    window_count=latest.window_count,
                    tokens_done=latest.tokens_done,
                    tokens_total=latest.tokens_total,
                    tokens_per_second=latest.tokens_per_second,
                    # the time left, by this machine's clock: the store dates it by the database's
                    eta_seconds=None
                    if latest.eta_at is None
                    else (latest.eta_at - datetime.now(UTC)).total_seconds(),
                    level_windows=latest.level_windows,
                )
            )
            run.written = latest
            self._database_back()
        except LeaseLost as exc:
            log.warning("%s", exc)
            run.stop(StopReason.LEASE_LOST)
        except Exception as exc:  # the next report tries again
            if not self._database_failed(f"job #{run.job.id}: writing progress", exc):
                log.exception("job #%s: writing progress failed", run.job.id)

    async def _save_checkpoint(self, run: _Run, blob: bytes) -> None:
        try:
            await self._until_stored(
                f"job #{run.job.id}: storing a checkpoint",
                lambda: self.store.save_checkpoint(run.job.id, self.worker_id, blob),
                tries=self.config.checkpoint_retries,
                bulk=True,
            )
        except LeaseLost:
            run.stop(StopReason.LEASE_LOST)
            raise


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Wait until `event` is set or `seconds` pass, whichever comes first."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)


def doubling_delay(first: float, times: int, most: float) -> float:
    """The wait after the `times`-th failure in a row: `first`, doubling each time, at most `most`."""
    return min(first * 2 ** min(times - 1, 32), most)


def _last_line(exc: BaseException) -> str:
    """What a traceback's last line says: `Type: message` (first line of the message)."""
    message = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__


# What torch and CUDA say when the device itself cannot run anything: no CUDA in this torch build, no
# such GPU, a GPU another process holds in exclusive mode, a missing or broken driver, a GPU too old
# or too new for this build. Every job on such a device fails the same way.
_DEVICE_UNUSABLE_WORDS = (
    "torch not compiled with cuda enabled",
    "no cuda-capable device is detected",
    "busy or unavailable",
    "found no nvidia driver",
    "cuda driver initialization failed",
    "driver version is insufficient",
    "nvidia driver on your system is too old",
    "invalid device ordinal",
    "no kernel image is available for execution on the device",
    "cuda unknown error",
)


# CUDA errors after which the process's CUDA context is unusable: every later call fails the same way.
_CONTEXT_LOST_WORDS = (
    "an illegal memory access was encountered",
    "device-side assert triggered",
    "unspecified launch failure",
    "misaligned address",
    "an illegal instruction was encountered",
)


def _device_context_lost(exc: BaseException) -> bool:
    """Whether `exc` (or an error it came from) is a CUDA error that breaks the process's context."""
    return any(
        words in str(error).lower()[:400] for error in errors_within(exc) for words in _CONTEXT_LOST_WORDS
    )


def _device_unusable(exc: BaseException) -> bool:
    """Whether `exc` says the device cannot run at all (not: ran out of memory, or a bad input)."""
    text = str(exc).lower()[:400]
    return not is_out_of_memory(exc) and any(words in text for words in _DEVICE_UNUSABLE_WORDS)


def check_device(device: DeviceSpec) -> None:
    """Raise `DeviceUnusable` (one sentence) when `device` cannot run in this process: a CUDA device
    this torch build or machine does not have, or one that cannot allocate (a broken driver, a GPU
    held by another process in exclusive mode, or full). The CPU always can. torch is imported here
    only for a CUDA device (such a worker's runner needs it anyway); this module does not import it."""
    if not device.is_cuda:
        return
    try:
        import torch
    except ImportError:
        raise DeviceUnusable(f"{device} needs torch, which is not installed") from None
    if torch.version.cuda is None:
        raise DeviceUnusable(
            f"{device} is not usable: this torch build ({torch.__version__}) has no CUDA support; "
            "install a CUDA build of torch, or run the worker on 'cpu'"
        )
    if not torch.cuda.is_available():
        raise DeviceUnusable(
            f"{device} is not usable: CUDA finds no usable GPU (no GPU, or its driver is missing or "
            "broken: check `nvidia-smi`)"
        )
    visible = torch.cuda.device_count()
    if device.index is None or device.index >= visible:
        raise DeviceUnusable(
            f"{device} is not there: this machine shows GPUs 0 to {visible - 1} "
            "(CUDA_VISIBLE_DEVICES may hide some)"
        )
    try:
        probe = torch.ones(1, device=device.name)
        torch.cuda.synchronize(device.name)
        del probe
    except Exception as exc:
        raise DeviceUnusable(
            f"{device} cannot allocate memory ({_last_line(exc)}): another process may hold it in "
            "exclusive mode or fill it, or its driver is broken"
        ) from None


# ----------------------------------------------------------------------------- the worker process


def worker_main(
    database_url: str,
    device_name: str,
    runner_factory_path: str,
    config: WorkerConfig | None = None,
    watch_parent: bool = True,
    log_level: int = logging.INFO,
    log_format: str = "text",
    state: WorkerState | None = None,
    pool_pid: int | None = None,
) -> None:
    """The body of a worker process (the pool's `spawn` target); exits 0 after a graceful stop.

    `pool_pid` is the pool's process: once it is gone the worker stops (it may be gone already)."""
    try:
        # First thing: the pool spawns us with the stop signals blocked, so one sent while we were
        # still importing (Ctrl-C signals the whole process group) waits for these handlers: it is
        # delivered as they are unblocked, and stops us.
        _stop_while_starting()
        configure_logging(log_level, log_format, context=f"worker {device_name} pid {os.getpid()}")
        # Not made undumpable as the bot and the pool are: another worker of this user reads its
        # /proc environment (CUDA_VISIBLE_DEVICES) to tell whether the two share a GPU
        # (`shares_my_device`), which an undumpable process's is closed to. It holds no Discord token
        # (`jukebot run` and `jukebot worker` take it out of the environment they spawn it with).
        code = run_worker(
            database_url,
            device_name,
            runner_factory_path,
            config,
            watch_parent=watch_parent,
            state=state,
            parent_pid=pool_pid,
        )
    except _StoppedWhileStarting as stopped:
        log.info("%s received while starting: stopping before claiming any job", stopped.name)
        code = EXIT_OK
    except BaseException:
        if not _RUNNER_THREAD_HANGS.is_set():
            raise
        log.exception("an error on the way out after the sampler hung")
        code = EXIT_HUNG
    if _RUNNER_THREAD_HANGS.is_set():  # Python's exit would join the hung runner thread, forever
        logging.shutdown()
        os._exit(EXIT_HUNG)
    sys.exit(code)


class _StoppedWhileStarting(BaseException):
    """A stop signal arrived before the worker served: nothing to release, so it stops at once.
    A BaseException, like KeyboardInterrupt, so that a runner factory's `except Exception` lets it by."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.name = signal.Signals(signum).name


def _raise_stopped(signum: int, _frame: object) -> None:
    raise _StoppedWhileStarting(signum)


def _stop_while_starting() -> None:
    for signum in handled_stop_signals():
        signal.signal(signum, _raise_stopped)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _defer_stop_signals() -> list[int]:
    """From here on, note a stop signal for the serving loop (which handles it) instead of raising."""
    received: list[int] = []
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is _raise_stopped:
            signal.signal(signum, lambda number, _frame: received.append(number))
    return received


def _parent_gone(parent_pid: int | None) -> bool:
    # Reparented (to init or a subreaper) once the pool died, however early that happened.
    return parent_pid is not None and os.getppid() != parent_pid


def run_worker(
    database_url: str,
    device_name: str,
    runner_factory_path: str,
    config: WorkerConfig | None = None,
    *,
    watch_parent: bool = False,
    state: WorkerState | None = None,
    parent_pid: int | None = None,
) -> int:
    """Check the device, build the runner, then serve until SIGTERM/SIGINT/SIGHUP (or, with
    `watch_parent`, the parent process `parent_pid` goes away). EXIT_CONFIG when restarting cannot
    help: a device that cannot run, a bad runner factory; EXIT_HUNG when the runner hung."""
    if watch_parent and parent_pid is None:
        parent_pid = os.getppid()
    try:
        if watch_parent and _parent_gone(parent_pid):
            log.warning("the pool (pid %s) is gone; stopping before building the runner", parent_pid)
            return EXIT_OK
        device = DeviceSpec(device_name)
        check_device(device)
        factory = load_runner_factory(runner_factory_path)
        runner = factory(device, dict((config or WorkerConfig()).runner_options))
        received = _defer_stop_signals()
    except (RunnerFactoryError, ValueError) as exc:  # DeviceError (DeviceUnusable) is a ValueError
        log.error("cannot start a worker on %s: %s.", device_name, str(exc).rstrip("."))
        return EXIT_CONFIG
    return asyncio.run(
        _serve_process(
            database_url,
            device,
            runner,
            config or WorkerConfig(),
            parent_pid if watch_parent else None,
            state,
            received,
        )
    )


async def _serve_process(
    database_url: str,
    device: DeviceSpec,
    runner: JobRunner,
    config: WorkerConfig,
    parent_pid: int | None,
    state: WorkerState | None = None,
    received: Sequence[int] = (),
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    engine = create_engine(database_url)
    worker = Worker(JobStore(engine), runner, device, config=config, state=state)
    for signum in handled_stop_signals():
        loop.add_signal_handler(signum, _on_signal, stop, signum, worker)
    # Checked once the loop's handlers are in: a signal is then either noted before or handled after.
    if received:
        _on_signal(stop, received[0], worker)
    if _parent_gone(parent_pid):
        log.warning("the pool (pid %s) is gone; stopping before claiming any job", parent_pid)
        stop.set()
    watcher = asyncio.create_task(_watch_parent(stop, parent_pid)) if parent_pid is not None else None
    try:
        if not stop.is_set():
            await worker.serve(stop)
        if worker.schema_not_ours:
            return EXIT_CONFIG  # restarting this version cannot help
    except DeviceUnusable as exc:
        log.error(
            "worker %s stops without claiming a job: %s; fix the device or the pool's device list.",
            worker.worker_id,
            exc,
        )
        return EXIT_CONFIG
    except DeviceContextLost as exc:
        log.error("worker %s stops: %s; its pool starts a fresh one", worker.worker_id, exc)
        return EXIT_CRASH
    except RunnerHung as exc:
        log.error("worker %s stops: %s; its pool starts a fresh one", worker.worker_id, exc)
        return EXIT_HUNG
    finally:
        if watcher is not None:
            watcher.cancel()
        await asyncio.to_thread(worker.close)
        await engine.dispose()
    return EXIT_OK


def _on_signal(stop: asyncio.Event, signum: int, worker: Worker | None = None) -> None:
    name = signal.Signals(signum).name
    if worker is not None and worker.running_job is not None:
        log.info("%s received: stopping after releasing job #%s to the queue", name, worker.running_job)
    elif worker is not None and isinstance(worker.runner, WarmsUp) and not worker.warmed_up:
        log.info("%s received: stopping once the runner's warm-up ends (no job running)", name)
    else:
        log.info("%s received: stopping (no job running)", name)
    stop.set()


async def _watch_parent(stop: asyncio.Event, parent_pid: int, every: float = 1.0) -> None:
    """Stop gracefully if the pool dies without telling us (e.g. kill -9): no orphan workers."""
    while not stop.is_set():
        if _parent_gone(parent_pid):
            log.warning("the pool (pid %s) is gone; stopping", parent_pid)
            stop.set()
            return
        await _wait(stop, every)


__all__ = [
    "EXIT_CONFIG",
    "EXIT_HUNG",
    "EXIT_OK",
    "STATE_JOB",
    "STATE_LAST_ATTEMPT",
    "STATE_SERVING",
    "STATE_SIZE",
    "DeviceContextLost",
    "DeviceUnusable",
    "JobOutcome",
    "RunnerHung",
    "Worker",
    "WorkerConfig",
    "WorkerConfigError",
    "WorkerState",
    "check_device",
    "machine_of",
    "make_worker_id",
    "pid_of",
    "run_worker",
    "this_machine",
    "worker_main",
]
