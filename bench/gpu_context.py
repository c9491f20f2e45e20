"""What every section of `bench/gpu.py` shares: the device, the sizes of this run, the budget, the
recorder, and the figures one section hands to later ones (bandwidth, decode rows, profiles)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, TypeVar

import torch

from bench.gpu_facts import StepSplit, split_step
from bench.gpu_record import Budget, Recorder, guarded
from bench.gpu_timing import ProfileTally, WindowPlan
from sampler.jukebox.prior import PriorConfig

T = TypeVar("T")


@dataclass
class Context:
    recorder: Recorder
    budget: Budget
    device: torch.device
    dry_run: bool
    engine: ModuleType | None
    compile_backend: str
    inject_failure: str | None = None
    engine_error: str | None = None  # why sampler.jukebox.decoding is not used, if it exists
    device_name: str = "unknown"
    nominal_bandwidth: float | None = None  # datasheet bytes/s of this device, if the bench knows it
    read_bandwidth: float | None = None  # measured in section A
    extras: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    profiles: dict[tuple[str, str], ProfileTally] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def capture(self) -> bool:
        """CUDA graphs are captured on a GPU only; a CPU run makes the same calls uncaptured."""
        return self.cuda

    @property
    def dtype(self) -> torch.dtype:
        """The worker's compute dtype on a GPU; fp32 on the CPU, where half precision is slow."""
        return torch.float16 if self.cuda else torch.float32

    def seconds(self, gpu: float, dry: float) -> float:
        """An estimate for this run: `gpu` at published sizes, `dry` at dry-run sizes."""
        return dry if self.dry_run else gpu

    def window_plan(self, config: PriorConfig) -> WindowPlan:
        """Mid-window: the timed tokens straddle the middle, where attention costs its average."""
        segment, timed, profiled = (16, 2, 16) if self.dry_run else (128, 3, 32)
        span = (2 + timed) * segment + profiled
        first = max(1, config.n_ctx // 2 - span // 2)
        return WindowPlan(first, segment, timed, profiled)

    def bound_bandwidth(self) -> float:
        """The denominator of this device's bound: its datasheet figure, else the measured one."""
        bandwidth = self.nominal_bandwidth or self.read_bandwidth
        if bandwidth is None:
            raise RuntimeError("no bandwidth: section A did not run and the device is unknown")
        return bandwidth

    def split(self, measured_ms: float, bytes_per_step: int) -> StepSplit:
        read = self.read_bandwidth or self.nominal_bandwidth
        if read is None:
            raise RuntimeError("no read bandwidth: section A did not run and the device is unknown")
        return split_step(measured_ms, bytes_per_step, read, self.nominal_bandwidth)

    def row(self, section: str, what: str, estimate: float, body: Callable[[], None]) -> bool:
        """`body` as one guarded row: skipped when it will not fit, an error record if it raises."""
        return guarded(self.recorder, self.budget, section, what, estimate, body)

    def build(self, section: str, what: str, estimate: float, factory: Callable[[], T]) -> T | None:
        """`factory()` as one guarded row; None when it was skipped or failed (the record says why)."""
        made: list[T] = []
        return made[0] if self.row(section, what, estimate, lambda: made.append(factory())) else None

    def emit(self, section: str, kind: str, **fields: Any) -> dict[str, Any]:
        return self.recorder.emit(section, kind, **fields)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
