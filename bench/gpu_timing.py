"""The harness that times a decode path (`gpu_paths`): segments of a window between `report`
calls, each ended by a synchronise and a clock read, and the profiler over one more segment
tallied from its raw events (kernels on CUDA, top-level operators on the CPU).
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from bench.gpu_paths import DecodePath, WindowJob, adapters, sync
from bench.gpu_record import alarm_held
from sampler.jukebox.prior import Conditioning, JukeboxPrior


@dataclass
class ProfileTally:
    """What the profiler saw over `steps` decode steps, by name: kernels (and memcpy/memset) on CUDA,
    top-level operators on the CPU. `by_name[name]` = [count, µs, input bytes]: the bytes of the
    inputs of the operator that launched it (with shapes recorded; else 0)."""

    steps: int
    events: int
    event_us: float
    by_name: dict[str, list[float]] = field(default_factory=dict)
    bytes_linked_fraction: float = 0.0  # of the µs, the share whose launching operator is known


_DTYPE_BYTES = {
    "float": 4,
    "double": 8,
    "c10::Half": 2,
    "c10::BFloat16": 2,
    "long int": 8,
    "int": 4,
    "bool": 1,
    "unsigned char": 1,
    "signed char": 1,
    "short int": 2,
}


def _input_bytes(event: Any) -> int:
    total = 0
    for shape, dtype in zip(event.shapes(), event.dtypes(), strict=False):
        if shape and all(isinstance(d, int) for d in shape):
            total += math.prod(shape) * _DTYPE_BYTES.get(dtype, 0)
    return total


def tally_profile(prof: Any, steps: int, cuda: bool) -> ProfileTally:
    """Tally the profiler's raw events (the FunctionEvent parse takes seconds per row)."""
    from torch.autograd import DeviceType

    events = prof.profiler.kineto_results.events()
    tops: list[Any] = []  # operators not nested in another: what the Python code dispatched
    end = -1
    ops = sorted(
        (e for e in events if e.device_type() == DeviceType.CPU and e.name().startswith("aten::")),
        key=lambda e: e.start_ns(),
    )
    owner: dict[int, Any] = {}  # correlation id of any operator → its top-level operator
    for op in ops:
        if op.start_ns() >= end:
            tops.append(op)
            end = op.start_ns() + op.duration_ns()
        owner[op.correlation_id()] = tops[-1]
    tally = ProfileTally(steps, 0, 0.0)
    linked_us = 0.0
    chosen = [e for e in events if e.device_type() == DeviceType.CUDA] if cuda else tops
    for event in chosen:
        us = event.duration_ns() / 1e3
        launcher = owner.get(event.linked_correlation_id()) if cuda else event
        nbytes = 0 if launcher is None else _input_bytes(launcher)
        linked_us += us if launcher is not None else 0.0
        tally.events += 1
        tally.event_us += us
        entry = tally.by_name.setdefault(event.name(), [0, 0.0, 0])
        entry[0] += 1
        entry[1] += us
        entry[2] += nbytes
    tally.bytes_linked_fraction = linked_us / tally.event_us if tally.event_us else 0.0
    return tally


@dataclass
class Timing:
    ms_per_step: float  # median timed segment / its tokens
    segments_ms: list[float]
    first_segment_ms: float  # prefill, warm-up and (where the path does it lazily) capture or compile
    setup_s: float
    engine: str
    tokens: Tensor
    peak_bytes: int | None
    compiled_graphs: int = 0
    profile: ProfileTally | None = None
    engine_error: str | None = None
    profile_error: str | None = None


@dataclass(frozen=True)
class WindowPlan:
    """A decode row's window: `first` known tokens, a warm-up segment, `timed` segments of `segment`
    tokens, and (when profiled) `profiled` more tokens under the profiler."""

    first: int
    segment: int
    timed: int
    profiled: int

    def new_tokens(self, path: DecodePath, engine: bool, profile: bool) -> int:
        """The bench's stepper draws its first token outside the calls: one more."""
        tokens = (1 + self.timed) * self.segment + (self.profiled if profile else 0)
        return tokens + (1 if path.captures and not engine else 0)


class _SegmentClock:
    """`report` for the adapters: synchronises and reads the clock at each segment end, and runs the
    profiler over the segment after the timed ones."""

    def __init__(self, device: torch.device, timed: int, profile: bool, shapes: bool) -> None:
        self.device, self.timed, self.profile, self.shapes = device, timed, profile, shapes
        self.marks: list[float] = []
        self.profiler: Any = None
        self.profiling = False
        self.profile_error: str | None = None  # a profiler that fails costs its figures, not the row

    def __call__(self, done: int) -> None:
        sync(self.device)
        self.marks.append(time.perf_counter())
        if self.profile and len(self.marks) == self.timed + 1:
            try:
                with alarm_held():
                    self.profiler = _start_profiler(self.device, self.shapes)
                    self.profiling = True
            except Exception as exc:
                self.profile_error = f"{type(exc).__name__}: {exc}"
        elif self.profiling and len(self.marks) == self.timed + 2:
            self.stop()

    def stop(self) -> None:
        if self.profiling:
            self.profiling = False
            try:
                with alarm_held():
                    self.profiler.stop()
            except Exception as exc:
                self.profiler, self.profile_error = None, f"{type(exc).__name__}: {exc}"

    def tally(self, steps: int) -> ProfileTally | None:
        if self.profiler is None:
            return None
        try:
            return tally_profile(self.profiler, steps, self.device.type == "cuda")
        except Exception as exc:
            self.profile_error = f"{type(exc).__name__}: {exc}"
            return None


def time_path(
    path: DecodePath,
    prior: JukeboxPrior,
    cond: Conditioning,
    known: Tensor,
    plan: WindowPlan,
    *,
    engine: ModuleType | None,
    capture: bool,
    compile_backend: str,
    profile: bool = False,
    shapes: bool = False,
    seed: int = 0,
) -> Timing:
    """Sample one window by `path` (the engine's adapter first, if any) and time its segments."""
    device = known.device
    engine_error = None
    for engine_name, adapter in adapters(path, engine, capture, compile_backend):
        clock = _SegmentClock(device, plan.timed, profile, shapes)
        new = plan.new_tokens(path, engine_name != "bench", profile)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        try:
            sampled = adapter(WindowJob(prior, cond, known, new, plan.segment, clock, seed))
        except Exception as exc:
            clock.stop()
            if engine_name == "bench":
                raise
            engine_error = f"{type(exc).__name__}: {exc}"
            continue
        except BaseException:  # the budget's alarm: the profiler must not stay on for later parts
            clock.stop()
            raise
        sync(device)
        clock.stop()
        expected = plan.timed + (2 if profile else 1)
        if len(clock.marks) != expected:
            problem = f"{engine_name} reported {len(clock.marks)} segment ends, expected {expected}"
            if engine_name == "bench":
                raise RuntimeError(problem)
            engine_error = problem
            continue
        marks = clock.marks
        spans = [(b - a) * 1e3 for a, b in itertools.pairwise(marks)][: plan.timed]
        tally = clock.tally(plan.profiled)
        return Timing(
            ms_per_step=statistics.median(spans) / plan.segment,
            segments_ms=spans,
            first_segment_ms=(marks[0] - start) * 1e3,
            setup_s=sampled.setup_s,
            engine=sampled.engine,
            tokens=sampled.tokens,
            peak_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
            compiled_graphs=sampled.compiled_graphs,
            profile=tally,
            engine_error=engine_error,
            profile_error=clock.profile_error,
        )
    # only a path the bench has no version of (the engine's Triton kernels) gets here
    raise RuntimeError(engine_error or f"no adapter ran {path.name}")


def _start_profiler(device: torch.device, shapes: bool) -> Any:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    prof = profile(activities=activities, record_shapes=shapes)
    prof.start()
    return prof
