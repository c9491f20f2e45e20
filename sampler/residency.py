"""Whether a model's priors stay on the device across levels and jobs: the setting and the decision.

Resident priors load once (at worker start, or with the model's first job) instead of once per
level of every job, which costs seconds to minutes of reading per job on a GPU. They need room for
all three priors at once, so `auto` keeps them only where the device has it.

Torch-free: the settings validate the setting here; the estimate itself is `sampler.loading`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

from sampler.engine_settings import SWITCHES, Switch, parse_choice
from sampler.units import format_bytes

ResidentPriors = Switch  # auto, on or off
DEFAULT_RESIDENT_PRIORS: ResidentPriors = "auto"

# Room beyond the priors' weights and KV caches: the VQ-VAE (7 MiB), the allocator's slack, prefill
# and decode temporaries, the decoded audio.
WORKING_BYTES = 2 * 2**30


def parse_resident_priors(text: str) -> ResidentPriors:
    """`auto`, `on` or `off` (any case; no 1/0 aliases); ValueError saying what to write."""
    return parse_choice("resident_priors", text, SWITCHES)


@dataclass(frozen=True)
class ResidentEstimate:
    """The device memory a model holds with every prior resident (bytes)."""

    weights: int  # the VQ-VAE and all three priors, in the dtypes they load in
    kv_caches: int  # every level's KV cache at its largest batch, all at once
    working: int = WORKING_BYTES

    @property
    def total(self) -> int:
        return self.weights + self.kv_caches + self.working

    def describe(self) -> str:
        return (
            f"{format_bytes(self.total)} = {format_bytes(self.weights)} weights + "
            f"{format_bytes(self.kv_caches)} KV caches + {format_bytes(self.working)} working"
        )


def keep_priors_resident(setting: ResidentPriors, free_bytes: int | None, needed_bytes: int) -> bool:
    """The decision: `on`/`off` as set; `auto` keeps them when the free device memory holds what they
    need (`free_bytes` None: a device without a memory budget of its own, the CPU)."""
    if setting != "auto":
        return setting == "on"
    return free_bytes is None or needed_bytes <= free_bytes
