"""The device facts and cost-model arithmetic of `bench/gpu.py`, each defined once (GPU-PLAN.md §3, §5).

A figure measured on one GPU converts to another only through a split: the part of a step that
streams bytes from memory scales with bandwidth, the rest (launches, latency, synchronisation)
does not. `split_step` makes that split for one measured time; `FORMULA` says it in words and is
printed with every projected figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# HBM bandwidth by datasheet, bytes/s: H100 SXM (HBM3) and H200 (HBM3e).
H100_BANDWIDTH = 3.35e12
H200_BANDWIDTH = 4.8e12
NOMINAL_BANDWIDTH = {"H100": H100_BANDWIDTH, "H200": H200_BANDWIDTH}

# The target: one minute of fully upsampled 5b_lyrics audio, 3 samples at once, on one H100, in at
# most twice the memory-bandwidth bound (≈ 264 s).
TARGET_SECONDS = 528.0
BATCH = 3

# GPU-PLAN §4 step 6: above this many seconds per upsampler layer on an H100 (22 MB of fp16 weights
# take ~6.6 µs to stream; level 0 must run at ≤ ~0.95 ms a step), the upsampler wants hand-fused kernels.
UPSAMPLER_LAYER_LIMIT = 13e-6

# Per minute of audio (3 samples in one batch), by level (2 = top, 0 = finest): decode steps, and
# known tokens fed by prefill (GPU-PLAN §3; from the window plans of hop fractions 1/8, 1/2, 1/2).
STEPS_PER_MINUTE = {2: 20_671, 1: 82_684, 0: 330_736}
PREFILL_TOKENS_PER_MINUTE = {2: 94_017, 1: 81_156, 0: 324_624}

FORMULA = (
    "streaming = bytes / measured read bandwidth; fixed = measured - streaming; "
    "H100 = bytes / (3.35 TB/s x efficiency) + fixed, "
    "efficiency = measured read bandwidth / this device's nominal bandwidth"
)


def nominal_bandwidth(device_name: str) -> float | None:
    """Datasheet bandwidth of a GPU named `device_name`, or None when the bench does not know it."""
    return next((bw for key, bw in NOMINAL_BANDWIDTH.items() if key in device_name), None)


@dataclass(frozen=True)
class StepSplit:
    """One measured step time split into a streaming part and a fixed part, and projected to an H100."""

    measured_ms: float
    bytes: int
    streaming_ms: float
    fixed_ms: float
    efficiency: float
    h100_ms: float

    def as_record(self) -> dict[str, float | int]:
        return {
            "ms_per_step": self.measured_ms,
            "bytes_per_step": self.bytes,
            "streaming_ms": self.streaming_ms,
            "fixed_ms": self.fixed_ms,
            "efficiency": self.efficiency,
            "h100_ms_per_step": self.h100_ms,
        }


def split_step(
    measured_ms: float, bytes_per_step: int, read_bandwidth: float, nominal: float | None
) -> StepSplit:
    """`FORMULA` for one step. `nominal` None (a device the bench does not know): efficiency 1."""
    if not (read_bandwidth > 0 and math.isfinite(read_bandwidth)):
        raise ValueError(f"the read bandwidth must be a positive number, got {read_bandwidth}")
    streaming_ms = bytes_per_step / read_bandwidth * 1e3
    efficiency = read_bandwidth / nominal if nominal else 1.0
    fixed_ms = measured_ms - streaming_ms
    h100_ms = bytes_per_step / (H100_BANDWIDTH * efficiency) * 1e3 + fixed_ms
    return StepSplit(measured_ms, bytes_per_step, streaming_ms, fixed_ms, efficiency, h100_ms)


def bound_seconds_per_minute(bytes_per_step: int, level: int, bandwidth: float) -> float:
    """The memory-bandwidth bound of one level: every step streams its bytes once at `bandwidth`."""
    return STEPS_PER_MINUTE[level] * bytes_per_step / bandwidth
