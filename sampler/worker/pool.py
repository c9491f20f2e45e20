"""The worker pool: one `spawn`ed worker process per device, restarted when it dies.

`run_pool` blocks until SIGTERM/SIGINT/SIGHUP (or a `stop` event), then stops every worker
gracefully — each releases its running job back to the queue with its checkpoint — waits up
to `shutdown_timeout`, and kills what is left (those jobs come back when their lease expires).
A worker that exits with `EXIT_CONFIG` (bad runner path, a device that is missing or cannot
run) is not restarted, nor is one that exits with `EXIT_OK`: it was told to stop (a stop signal, which
a terminal, ssh or systemd send to the pool's whole process group at once, the pool's host with it)
and released its job. Any other death is restarted, after a backoff that doubles while deaths keep
coming quickly or before the worker ever finished warming up (e.g. the kernel's out-of-memory killer
striking while a big model loads, however long that takes).

    python -m sampler.worker.pool --database-url URL --runner package.module:function --devices cpu
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import multiprocessing.resource_tracker
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from sampler.worker.contract import DeviceError, DeviceSpec, factory_exists
from sampler.worker.logs import LOG_FORMATS, configure_logging
from sampler.worker.runtime import (
    EXIT_CONFIG,
    EXIT_HUNG,
    EXIT_OK,
    STATE_JOB,
    STATE_LAST_ATTEMPT,
    STATE_SERVING,
    STATE_SIZE,
    WorkerConfig,
    WorkerState,
    doubling_delay,
    worker_main,
)
from sampler.worker.stop_signals import STOP_SIGNALS, handled_stop_signals

log = logging.getLogger(__name__)

SUPERVISE_TICK_SECONDS = 0.5  # how often the supervisor looks at the stop flag while nothing dies


def devices_from_setting(gpus: Sequence[int] | None, *, require_gpu: bool = False) -> list[DeviceSpec]:
    """The devices to run workers on: None = every visible GPU (one CPU worker when there is none, a
    DeviceError with `require_gpu`), [] = one CPU worker, [0, 1] = those GPUs (each must be visible)."""
    if gpus is not None and len(gpus) == 0:
        return [DeviceSpec.cpu()]
    import torch  # only here: the pool itself never needs torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus is None and not visible and require_gpu:
        if torch.version.cuda is None:
            why = "it is a CPU-only build: install a CUDA build (JUKEBOT_TORCH=cuda with scripts/run.sh)"
        else:
            why = (
                f"is the NVIDIA driver new enough for CUDA {torch.version.cuda}, and is the GPU given to "
                "this container?"
            )
        raise DeviceError(
            f"JUKEBOT_GPUS=all, but torch {torch.__version__} sees no CUDA GPU here ({why}); set "
            "JUKEBOT_GPUS=auto to run one CPU worker instead"
        )
    if gpus is None:
        return [DeviceSpec.cuda(index) for index in range(visible)] or [DeviceSpec.cpu()]
    missing = [index for index in gpus if not 0 <= index < visible]
    if missing:
        seen = f"GPUs 0 to {visible - 1}" if visible else "no GPU"
        which = f"GPU {missing[0]} is" if len(missing) == 1 else f"GPUs {', '.join(map(str, missing))} are"
        raise DeviceError(
            f"{which} not visible (this machine shows {seen}); "
            "set JUKEBOT_GPUS to indices that exist, 'auto' or 'cpu'."
        )
    return [DeviceSpec.cuda(index) for index in dict.fromkeys(gpus)]


@dataclass
class _Slot:
    """One device's worker and its restart bookkeeping."""

    device: DeviceSpec
    process: BaseProcess | None = None
    state: WorkerState | None = None  # shared with the process: serving yet, the job it runs
    started_at: float = 0.0
    quick_deaths: int = 0
    restart_at: float | None = None
    disabled: bool = False
    stopped: bool = False  # exited 0, told to stop by a signal of its own: not restarted
    restarts: int = field(default=0)


class WorkerPool:
    """Start, supervise and stop one worker process per device (use `run_pool` for the whole loop)."""

    def __init__(
        self,
        database_url: str,
        devices: Sequence[DeviceSpec],
        runner_factory_path: str,
        *,
        config: WorkerConfig | None = None,
        restart_backoff: float = 1.0,
        max_restart_backoff: float = 60.0,
        stable_seconds: float = 60.0,
        log_level: int = logging.INFO,
        log_format: str = "text",
    ) -> None:
        if not devices:
            raise DeviceError("The pool needs at least one device ('cpu' or 'cuda:N').")
        factory_exists(runner_factory_path)
        self.database_url = database_url
        self.runner_factory_path = runner_factory_path
        self.config = config or WorkerConfig()
        self.restart_backoff = restart_backoff
        self.max_restart_backoff = max_restart_backoff
        # a worker that warmed up and then lived this long restarts without delay
        self.stable_seconds = stable_seconds
        self.log_level = log_level
        self.log_format = log_format  # worker processes log like the pool (spawn starts them bare)
        self._context = multiprocessing.get_context("spawn")  # fork would copy CUDA state and threads
        self.slots = [_Slot(device) for device in dict.fromkeys(devices)]
        # `wake()` (safe from a signal handler) ends the supervisor's wait at once.
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._wake_reader.setblocking(False)
        self._wake_writer.setblocking(False)

    def wake(self) -> None:
        try:
            self._wake_writer.send(b"\0")
        except OSError:  # the buffer is full: a wake-up is already pending
            pass

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        for slot in self.slots:
            self._spawn(slot)

    def _spawn(self, slot: _Slot) -> None:
        # Lock-free: a worker killed while writing it must not leave a lock the pool would wait on.
        state = self._context.RawArray("q", STATE_SIZE)
        process = self._context.Process(
            target=worker_main,
            args=(
                self.database_url,
                slot.device.name,
                self.runner_factory_path,
                self.config,
                True,
                self.log_level,
                self.log_format,
                state,
                os.getpid(),  # the worker stops once this process is gone, even before it looks
            ),
            name=f"jukebot-worker-{slot.device}",
        )
        # `process.start()` starts the resource tracker if it is not running yet, which unblocks SIGINT
        # and SIGTERM in this thread: started first, it cannot undo the mask below.
        multiprocessing.resource_tracker.ensure_running()
        with _stop_signals_blocked():
            process.start()
        slot.process, slot.state, slot.started_at, slot.restart_at = process, state, time.monotonic(), None
        log.info("worker on %s started (pid %s)", slot.device, process.pid)

    @property
    def alive(self) -> bool:
        """False once every device's worker was given up (config errors)."""
        return any(not slot.disabled for slot in self.slots)

    @property
    def serving(self) -> bool:
        """Some device's worker runs, or will be restarted: not every one given up or stopped."""
        return any(not (slot.disabled or slot.stopped) for slot in self.slots)

    def pids(self) -> dict[str, int | None]:
        return {
            slot.device.name: slot.process.pid
            if slot.process is not None and slot.process.is_alive()
            else None
            for slot in self.slots
        }

    def supervise(self, timeout: float = SUPERVISE_TICK_SECONDS) -> None:
        """Wait up to `timeout` for a worker to die; note deaths and start restarts that are due."""
        now = time.monotonic()
        due = [slot.restart_at - now for slot in self.slots if slot.restart_at is not None]
        wait_for = max(0.0, min([timeout, *due]))
        waitables: list[Any] = [slot.process.sentinel for slot in self.slots if slot.process is not None]
        if self._wake_reader in multiprocessing.connection.wait([*waitables, self._wake_reader], wait_for):
            with contextlib.suppress(OSError):
                self._wake_reader.recv(4096)
        now = time.monotonic()
        for slot in self.slots:
            process = slot.process
            if process is not None and not process.is_alive():
                process.join()
                self._on_death(slot, process.exitcode, now)
            if slot.restart_at is not None and slot.restart_at <= now:
                slot.restarts += 1
                self._spawn(slot)

    def _on_death(self, slot: _Slot, exitcode: int | None, now: float) -> None:
        slot.process = None
        if exitcode == EXIT_CONFIG:
            slot.disabled = True
            log.error(
                "worker on %s cannot run (see its log above: restarting cannot help); not restarting it",
                slot.device,
            )
            return
        if exitcode == EXIT_OK:
            # A worker exits 0 only once told to stop (a stop signal; its pool gone), its job released.
            # A terminal (Ctrl-C, closed), ssh or systemd signal the whole process group at once: the
            # pool's host learns of it too, but `jukebot run` passes the stop on only once its bot has
            # closed. Restarting the worker meanwhile would start one only to stop it again (or claim
            # the job it just released, or load a model the shutdown then waits for).
            slot.stopped, slot.state = True, None
            log.info("worker on %s stopped on a stop signal (exit 0); not restarting it", slot.device)
            return
        lived = now - slot.started_at
        serving = slot.state is not None and slot.state[STATE_SERVING] == 1
        job = slot.state[STATE_JOB] if slot.state is not None else 0
        last_attempt = slot.state is not None and slot.state[STATE_LAST_ATTEMPT] == 1
        slot.state = None
        if not job:
            resumes = ""
        elif last_attempt:
            resumes = f" (job #{job} is out of attempts: it fails a lease after its lease is seen run out)"
        else:
            resumes = f" (job #{job} resumes from its checkpoint)"
        # Only a worker that got to serve and then lived a while restarts at once. One that dies before
        # it finished warming up (the OOM killer while a model loads, however long loading takes)
        # would die the same way again: each such death doubles the wait, like quick deaths.
        stable = serving and lived >= self.stable_seconds
        slot.quick_deaths = 0 if stable else slot.quick_deaths + 1
        delay = (
            0.0
            if slot.quick_deaths == 0
            else doubling_delay(self.restart_backoff, slot.quick_deaths, self.max_restart_backoff)
        )
        if exitcode == -signal.SIGKILL:
            how = "was killed by SIGKILL (often the kernel's out-of-memory killer: check `dmesg`)"
        elif exitcode and exitcode < 0:
            how = f"was killed by {_signal_name(-exitcode)}"
        elif exitcode == EXIT_HUNG:
            how = f"exited ({exitcode}: its sampler hung)"
        else:
            how = f"exited ({exitcode})"
        log.warning(
            "worker on %s %s after %.1f s%s; restarting in %.1f s%s",
            slot.device,
            how,
            lived,
            "" if serving else ", before it finished warming up",
            delay,
            resumes,
        )
        slot.restart_at = now + delay

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM every worker (each releases its job), wait up to `timeout`, then kill stragglers."""
        running = [
            slot.process for slot in self.slots if slot.process is not None and slot.process.is_alive()
        ]
        for slot in self.slots:
            slot.restart_at = None
        for process in running:
            process.terminate()
        deadline = time.monotonic() + timeout
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in running:
            if process.is_alive():
                log.error("worker pid %s did not stop within %.0f s; killing it", process.pid, timeout)
                process.kill()
                process.join()
        for slot in self.slots:
            slot.process = None
        self._wake_reader.close()
        self._wake_writer.close()
        log.info("all workers stopped")


@contextlib.contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Block the stop signals in this thread while it spawns a worker, which inherits the mask: one
    sent while the worker still imports (Ctrl-C signals the whole process group) then waits for its
    handlers and stops it cleanly, rather than kill it with a traceback (which the pool would restart).
    Signals sent to the pool meanwhile are delivered once the mask is restored."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def run_pool(
    database_url: str,
    devices: Sequence[DeviceSpec],
    runner_factory_path: str,
    *,
    config: WorkerConfig | None = None,
    stop: threading.Event | None = None,
    shutdown_timeout: float = 60.0,
    restart_backoff: float = 1.0,
    install_signal_handlers: bool = True,
    log_level: int = logging.INFO,
    log_format: str = "text",
) -> int:
    """Run workers until SIGTERM/SIGINT/SIGHUP or `stop` is set; returns a process exit status.

    Signal handlers can only be installed from the main thread; from another thread pass
    `install_signal_handlers=False` and set `stop` instead.
    """
    stop = stop or threading.Event()
    pool = WorkerPool(
        database_url,
        devices,
        runner_factory_path,
        config=config,
        restart_backoff=restart_backoff,
        log_level=log_level,
        log_format=log_format,
    )
    previous: dict[int, object] = {}
    if install_signal_handlers:

        def on_signal(signum: int, _frame: FrameType | None) -> None:
            log.info("%s received: stopping the workers gracefully", _signal_name(signum))
            stop.set()
            pool.wake()

        for stop_signal in handled_stop_signals():  # one ignored at start (nohup) stays ignored
            previous[stop_signal] = signal.signal(stop_signal, on_signal)
    try:
        pool.start()
        while not stop.is_set() and pool.serving:
            pool.supervise()
        if not stop.is_set() and pool.alive:
            log.info("every worker stopped on a stop signal of its own; the pool stops too")
    finally:
        pool.stop(shutdown_timeout)
        for signal_number, handler in previous.items():
            signal.signal(signal_number, handler)  # type: ignore[arg-type]
    return EXIT_OK if pool.alive else EXIT_CONFIG


def _parse_devices(values: Sequence[str]) -> list[DeviceSpec]:
    names = [name for value in values for name in value.replace(",", " ").split()]
    if not names or names == ["auto"]:
        return devices_from_setting(None)
    return [DeviceSpec(name) for name in names]


def _parse_runner_options(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    options = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--runner-option {item!r} must look like KEY=VALUE (e.g. model_dir=/models)")
        options.append((key.strip(), value))
    return tuple(options)


def main(argv: Sequence[str] | None = None) -> int:
    defaults = WorkerConfig()
    parser = argparse.ArgumentParser(
        prog="python -m sampler.worker.pool", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--runner", required=True, help="runner factory, 'package.module:function'")
    parser.add_argument("--devices", action="append", default=[], help="'auto', 'cpu', 'cuda:0' (repeatable)")
    parser.add_argument("--lease-seconds", type=float, default=defaults.lease_seconds)
    parser.add_argument("--poll-seconds", type=float, default=defaults.poll_seconds)
    parser.add_argument("--max-poll-seconds", type=float, default=defaults.max_poll_seconds)
    parser.add_argument("--progress-seconds", type=float, default=defaults.progress_seconds)
    parser.add_argument("--cancel-poll-seconds", type=float, default=defaults.cancel_poll_seconds)
    parser.add_argument("--requeue-seconds", type=float, default=defaults.requeue_seconds)
    parser.add_argument("--checkpoint-seconds", type=float, default=defaults.checkpoint_seconds)
    parser.add_argument(
        "--stall-seconds",
        type=float,
        default=defaults.stall_seconds,
        help="a job whose sampler shows no sign of life this long hangs: retried, its worker restarted",
    )
    parser.add_argument(
        "--crash-backoff-seconds",
        type=float,
        default=defaults.crash_backoff_seconds,
        help="wait after a job crashed before claiming again (doubles while crashes repeat)",
    )
    parser.add_argument(
        "--runner-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting handed to the runner factory, e.g. model_dir=/models (repeatable)",
    )
    parser.add_argument("--restart-backoff", type=float, default=1.0)
    parser.add_argument("--shutdown-timeout", type=float, default=60.0)
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="text")
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    configure_logging(level, args.log_format, context="pool")
    try:
        devices = _parse_devices(args.devices)
        config = WorkerConfig(
            lease_seconds=args.lease_seconds,
            poll_seconds=args.poll_seconds,
            max_poll_seconds=max(args.max_poll_seconds, args.poll_seconds),
            progress_seconds=args.progress_seconds,
            cancel_poll_seconds=args.cancel_poll_seconds,
            requeue_seconds=args.requeue_seconds,
            checkpoint_seconds=args.checkpoint_seconds,
            stall_seconds=args.stall_seconds,
            crash_backoff_seconds=args.crash_backoff_seconds,
            max_crash_backoff_seconds=max(defaults.max_crash_backoff_seconds, args.crash_backoff_seconds),
            runner_options=_parse_runner_options(args.runner_option),
        )
        return run_pool(
            args.database_url,
            devices,
            args.runner,
            config=config,
            shutdown_timeout=args.shutdown_timeout,
            restart_backoff=args.restart_backoff,
            log_level=level,
            log_format=args.log_format,
        )
    except ValueError as exc:  # DeviceError, RunnerFactoryError, WorkerConfigError
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
