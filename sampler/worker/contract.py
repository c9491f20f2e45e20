"""The contract between a worker and whatever samples a job (the cascade, or a toy runner in tests).

A worker claims a job, gathers what it needs (`JobTask`) and calls `JobRunner.run` in a thread.
The runner reports progress per chunk of tokens and hands over a checkpoint after every
window through `ProgressReporter`, checks `should_stop` at least once per chunk (so cancel and
shutdown take effect within seconds, even inside a long window), and returns the finished
samples. Failures that retrying cannot fix are raised as `JobFailed` (a runner translates its
own such errors into it); the worker keeps their message on the job. Anything else counts as a
crash and the job is retried. A runner may also prepare itself once, at worker start (`WarmsUp`).

No torch here: the pool and the bot import this module.
"""

from __future__ import annotations

import enum
import importlib
import importlib.util
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from storage.records import ClaimedJob, NewSample, Prime, Sample

_DEVICE_PATTERN = re.compile(r"^(cpu|cuda:(\d+))$")


class DeviceError(ValueError):
    """A device name that is not "cpu" or "cuda:N", or a GPU that is not there."""


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """The one device a worker process runs on: "cpu" or "cuda:N" (a torch device string)."""

    name: str

    def __post_init__(self) -> None:
        if not _DEVICE_PATTERN.match(self.name):
            raise DeviceError(f"Unknown device {self.name!r}: use 'cpu' or 'cuda:N' (for example 'cuda:0').")

    @classmethod
    def cpu(cls) -> DeviceSpec:
        return cls("cpu")

    @classmethod
    def cuda(cls, index: int) -> DeviceSpec:
        return cls(f"cuda:{index}")

    @property
    def is_cuda(self) -> bool:
        return self.name.startswith("cuda:")

    @property
    def index(self) -> int | None:
        return int(self.name.split(":", 1)[1]) if self.is_cuda else None

    def __str__(self) -> str:
        return self.name


class StopReason(enum.StrEnum):
    CANCEL = "cancel"  # the user cancelled the job
    SHUTDOWN = "shutdown"  # the worker is stopping; the job goes back to the queue
    LEASE_LOST = "lease lost"  # another worker owns the job now; drop everything


StopCheck = Callable[[], StopReason | None]


class Stage(enum.StrEnum):
    """Stage names runners report; the bot shows them as they are."""

    LOADING = "loading models"
    ENCODING_PRIME = "encoding the prime"
    SAMPLING = "sampling"  # the top level (the preview)
    UPSAMPLING = "upsampling"
    DECODING = "decoding audio"
    COMPRESSING = "compressing audio"


# ----------------------------------------------------------------------------- how a run ends early


class JobStopped(Exception):
    """The runner stopped because `should_stop` said so (raise one of the subclasses)."""


class JobCancelled(JobStopped):
    """The user cancelled: the job ends `cancelled`."""


class JobInterrupted(JobStopped):
    """The worker is shutting down (or lost the lease): the job keeps its checkpoint for the next run."""


class ModelNotHere(JobInterrupted):
    """The job's model is not (any more) complete on this worker, e.g. a file was removed after the claim:
    the job goes back to the queue for a worker that has it. The message, for the operator's log, says
    what is missing and how to fetch it; users never see it."""


def raise_if_stopped(should_stop: StopCheck) -> None:
    """Call once per chunk of tokens: raises `JobCancelled`/`JobInterrupted` when the worker says stop."""
    reason = should_stop()
    if reason is StopReason.CANCEL:
        raise JobCancelled("the job was cancelled")
    if reason is not None:
        raise JobInterrupted(f"interrupted: {reason.value}")


class JobFailed(Exception):
    """A failure that retrying will not fix; `str()` is kept on the job and shown to the user."""


# What to lower after running out of memory: the one hint, from the runner or the runtime.
OUT_OF_MEMORY_SETTING = "the number of samples (or the operator's JUKEBOT_MAX_BATCH_SIZE)"


class OutOfMemory(JobFailed):
    """The device ran out of memory; the message names the setting to lower."""

    def __init__(
        self, device: DeviceSpec | str, setting: str = OUT_OF_MEMORY_SETTING, detail: str = ""
    ) -> None:
        self.device, self.setting = str(device), setting
        what = f" ({detail})" if detail else ""
        super().__init__(
            f"Out of memory on {self.device}{what}. Lower {setting} and try again, "
            "or run the job on a GPU with more memory."
        )


class JobDidNotFit(Exception):
    """The job's model did not fit in the device's memory free now (a prior, the VQ-VAE, or a window of
    one sample): not the member's doing, and a worker with more memory may run it. The job goes back to
    the queue with an attempt counted (out of attempts, it fails saying this), and the runner serves the
    model no more for a while. The message must not read as out of memory (the runtime fails those at
    once)."""


class BadCheckpoint(JobFailed):
    """The job's stored resume checkpoint cannot be read (it does not match this job)."""


# ----------------------------------------------------------------------------- what a runner gets and gives


@dataclass(frozen=True, slots=True)
class JobTask:
    """Everything a runner needs: the claimed job, what it resumes from, and its inputs.

    `parent` is the sample an upsample or continue job works on; `prime` the clip a primed
    job continues. The worker loads both from the store before the run starts.
    """

    job: ClaimedJob
    checkpoint: bytes | None = None
    parent: Sample | None = None
    prime: Prime | None = None


@dataclass(frozen=True, slots=True)
class LevelProgress:
    """Where one level of a job stands, for a runner that may sample several levels at once."""

    level: int
    window: int  # the window being sampled (or next), 1..window_count
    window_count: int
    tokens_done: int  # this level's tokens
    tokens_total: int
    sampling: bool  # a window of this level is being sampled now


class ProgressReporter(Protocol):
    """How a runner talks back to the worker: from the runner's thread, or threads it starts, one
    call at a time."""

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
        """Where the run is. Tokens count over the whole job (all levels it samples), so
        `tokens_done / tokens_total` is the job's progress unless `fraction` says otherwise.
        `window` counts 1..`window_count` over the windows this level samples (it is shown as is).
        `levels` (every level the job samples) lets the worker show each level sampling at once and
        time each one: the job ends with its slowest level.
        Cheap: the worker writes the latest report at a throttled rate."""
        ...

    def checkpoint(self, blob: bytes | Callable[[], bytes]) -> None:
        """Store what a resumed run starts from. It is stored while the next window samples: the call
        returns once the previous checkpoint is durably stored (the worker waits for the last one),
        except while the database is unreachable: then it returns at once, and the newest is kept
        in memory and stored when the database is back.
        Checkpoints closer together than the worker's interval are held back and only the newest is
        stored, so a runner may pass a function that serialises its state when that happens; it must
        capture the state as it is at the call.

        Raises `storage.LeaseLost` when the job is no longer ours: let it propagate.
        """
        ...


@runtime_checkable
class JobRunner(Protocol):
    """Samples jobs on one device. Built once per worker process by a `RunnerFactory`."""

    @property
    def models(self) -> frozenset[str]:
        """The job models (e.g. "5b_lyrics") this runner can serve now. Read before every claim, so it
        must be cheap; it may grow (files downloaded) or shrink while the worker runs."""
        ...

    def run(self, task: JobTask, report: ProgressReporter, should_stop: StopCheck) -> list[NewSample]: ...


@runtime_checkable
class WarmsUp(Protocol):
    """A runner that prepares itself once, at worker start (optional: a runner without `warm_up` is
    not asked). The worker calls it in the runner's thread before its first claim and logs how long
    it took; what it does is the runner's business. If it raises, the worker logs that and serves
    anyway, so a runner must still load what a job needs when the job runs; only an error that says
    the device cannot run at all (no CUDA, no such GPU, a broken driver) stops the worker.

    It calls `alive()` between its steps (a model loaded, a decoder compiled): like a job's reports,
    each is a sign of life, and a warm-up silent for the worker's stall limit hangs."""

    def warm_up(self, alive: Callable[[], None]) -> None: ...


# The runner's own settings (e.g. its model directory), as the pool was given them
# (`--runner-option KEY=VALUE`, or `jukebot run|worker` from its settings).
RunnerOptions = Mapping[str, str]
RunnerFactory = Callable[[DeviceSpec, RunnerOptions], JobRunner]


class RunnerFactoryError(ValueError):
    """A "module:function" runner factory path that cannot be used."""


def split_factory_path(path: str) -> tuple[str, str]:
    module, sep, function = path.partition(":")
    if not sep or not module or not function.isidentifier():
        raise RunnerFactoryError(
            f"Runner factory {path!r} must look like 'package.module:function' "
            "(a function taking a device and returning a runner)."
        )
    return module, function


def factory_exists(path: str) -> None:
    """Check that the factory's module can be found, without importing it (and torch with it)."""
    module, _ = split_factory_path(path)
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError) as exc:
        raise RunnerFactoryError(f"Runner factory {path!r}: cannot find module {module!r} ({exc}).") from None
    if spec is None:
        raise RunnerFactoryError(
            f"Runner factory {path!r}: there is no module {module!r} on the Python path."
        )


def load_runner_factory(path: str) -> RunnerFactory:
    """Import "module:function" and return the function."""
    module_name, function_name = split_factory_path(path)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RunnerFactoryError(f"Runner factory {path!r}: cannot import {module_name!r} ({exc}).") from exc
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise RunnerFactoryError(f"Runner factory {path!r}: {module_name} has no function {function_name!r}.")
    return factory  # type: ignore[no-any-return]
