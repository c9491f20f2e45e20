"""Records, budget and failure isolation for `bench/gpu.py`.

The GPU run happens once, on a machine that may stop the command at any moment: every figure is
written as one JSON line the moment it is measured (stdout and `--out DIR/gpu.jsonl`, flushed), a
part whose estimate does not fit the time left is skipped with a record saying so, a part that
raises writes an error record and the run goes on, and an alarm stops a part that overruns the
budget (`BudgetSpent`, which no `except Exception` swallows).
"""

from __future__ import annotations

import gc
import json
import math
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import torch

RECORDS_FILE = "gpu.jsonl"
SUMMARY_FILE = "summary.txt"


class BudgetSpent(BaseException):
    """The run's `--budget` is spent: raised by the alarm inside whatever part is running."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    return value


class Recorder:
    """JSON lines to stdout and to `out_dir/gpu.jsonl`, each flushed as it is written; kept in memory
    for the summary."""

    def __init__(self, out_dir: Path | None, stream: TextIO = sys.stdout) -> None:
        self.records: list[dict[str, Any]] = []
        self.out_dir = out_dir
        self._stream = stream
        self._file: TextIO | None = None
        if out_dir is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            self._file = (out_dir / RECORDS_FILE).open("w", encoding="utf-8")
        self._start = time.perf_counter()

    def emit(self, section: str, kind: str, **fields: Any) -> dict[str, Any]:
        record = _jsonable({"section": section, "kind": kind, **fields})
        record["t_s"] = round(time.perf_counter() - self._start, 3)
        line = json.dumps(record, default=str)  # an unforeseen type must not lose the figure
        print(line, file=self._stream, flush=True)
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()
        self.records.append(record)
        return record

    def skip(self, section: str, what: str, reason: str) -> None:
        self.emit(section, "skip", what=what, reason=reason)

    def error(self, section: str, what: str, exc: BaseException) -> None:
        tail = "".join(traceback.format_exception(exc)[-6:])
        self.emit(section, "error", what=what, error=f"{type(exc).__name__}: {exc}", traceback=tail)

    def write_text(self, name: str, text: str) -> None:
        if self.out_dir is not None:
            (self.out_dir / name).write_text(text, encoding="utf-8")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Budget:
    """Seconds left of `--budget` (None: no limit), less a reserve kept for the summary."""

    def __init__(self, seconds: float | None, reserve: float) -> None:
        self.seconds, self.reserve = seconds, reserve
        self._start = time.perf_counter()

    def left(self) -> float:
        if self.seconds is None:
            return math.inf
        return self.seconds - self.reserve - (time.perf_counter() - self._start)

    def fits(self, estimate: float) -> bool:
        return estimate <= self.left()

    def why_not(self, estimate: float) -> str:
        return f"needs about {estimate:.1f} s, {max(self.left(), 0.0):.1f} s of the budget left"


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise `BudgetSpent` in this (main) thread once `seconds` have passed; no-op where alarms don't work."""
    usable = math.isfinite(seconds) and hasattr(signal, "setitimer")
    if not usable or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise BudgetSpent("the --budget ran out in this part")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextmanager
def alarm_held() -> Iterator[None]:
    """Hold the budget's alarm back while the block runs, and raise it after: the profiler stopped
    half-way through its start or stop stays on for every later measurement (and crashes the exit)."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)  # an alarm that came meanwhile fires now


class DeviceBroken(BaseException):
    """The device failed for good (a sticky CUDA error: an illegal address, a device-side assert):
    every later call on it fails too, so the parts left are skipped and the run ends with its summary
    (a BaseException, as `BudgetSpent`: no row's `except Exception` goes on after it)."""


def release_memory(collect: bool = True) -> None:
    """Hand cached GPU memory back; `collect` first frees cycles (a few 100 ms with dynamo loaded).
    `DeviceBroken` when the device cannot even do that."""
    if collect:
        gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        try:
            torch.cuda.empty_cache()
        except Exception as exc:
            raise DeviceBroken(f"the device failed for good: {type(exc).__name__}: {exc}") from exc


def guarded(
    recorder: Recorder,
    budget: Budget,
    section: str,
    what: str,
    estimate: float,
    body: Callable[[], None],
) -> bool:
    """Run one row of a section: skipped with a reason when its estimate does not fit the budget, an
    error record (and the section goes on) when it raises. Returns whether it ran to the end."""
    if not budget.fits(estimate):
        recorder.skip(section, what, budget.why_not(estimate))
        return False
    try:
        body()
        return True
    except Exception as exc:
        recorder.error(section, what, exc)
        return False
    finally:
        release_memory(collect=False)


def run_part(
    recorder: Recorder,
    budget: Budget,
    section: str,
    name: str,
    estimate: float,
    body: Callable[[], None],
    inject_failure: bool = False,
) -> None:
    """One part of a section under the budget's alarm; always ends with a `section` record."""
    start = time.perf_counter()
    broken: DeviceBroken | None = None
    if not budget.fits(estimate):
        recorder.skip(section, name, budget.why_not(estimate))
        status = "skipped"
    else:
        status = "done"
        try:
            with deadline(budget.left()):
                if inject_failure:
                    raise RuntimeError(
                        f"failure injected into section {section} (--inject-failure, test only)"
                    )
                body()
        except BudgetSpent as exc:
            recorder.error(section, name, exc)
            status = "stopped"
        except DeviceBroken as exc:
            broken = exc
        except Exception as exc:
            recorder.error(section, name, exc)
            status = "error"
        if broken is None:
            try:
                release_memory()
            except DeviceBroken as exc:
                broken = exc
        if broken is not None:
            recorder.error(section, name, broken)
            status = "device broken"
    recorder.emit(
        section,
        "section",
        part=name,
        status=status,
        wall_s=time.perf_counter() - start,
        estimate_s=estimate,
    )
    if broken is not None:
        raise broken
