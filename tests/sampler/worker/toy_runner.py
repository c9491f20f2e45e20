"""A deterministic stand-in for the sampling cascade, for worker and pool tests.

It behaves like a windowed sampler: each level it samples is a run of windows of
`TOKENS_PER_WINDOW` tokens; every token comes from a small recurrent computation seeded by
(sample seed, level, window start, the level above), so the codes do not depend on where a run
was interrupted. It checkpoints the codes after every window, resumes from a checkpoint,
reports progress and checks `should_stop` per chunk of tokens, burns real CPU per token (so a
test can kill -9 a worker mid-window), and ends with NewSamples holding int16 codes per level
and real compressed audio (a tone whose pitch follows the codes).

Knobs (environment variables, so they reach spawned worker processes):
  JUKEBOT_TOY_LOG_DIR      append one JSON line per event to <dir>/job-<id>.jsonl ("start",
                           "window", "done"), so tests can count what was actually sampled
  JUKEBOT_TOY_MODEL_DIR    check the job's model files there (`require_checkpoints`); unset: no check
  JUKEBOT_TOY_WORK         matrix-vector products burned per token (default 50)
  JUKEBOT_TOY_MODELS       comma-separated models served (default: every published model)
Job hooks (in the params' `artist`): "!crash" raises RuntimeError every run; "!oom" raises
OutOfMemory; "!hang" hangs in its first attempt after its first checkpoint, as on a GPU that stopped
answering: no more reports or stop checks, until its process exits.
"""

from __future__ import annotations

import io
import json
import math
import os
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from sampler.audio import SAMPLE_RATE, encode_to_fit
from sampler.jobspec import InvalidJobParams, JobParams, parse_params
from sampler.jukebox.registry import MODELS
from sampler.model_files import ModelFilesError, ModelFilesMissing, available_models, require_checkpoints
from sampler.worker.contract import (
    BadCheckpoint,
    DeviceSpec,
    JobFailed,
    JobTask,
    ModelNotHere,
    OutOfMemory,
    ProgressReporter,
    RunnerOptions,
    Stage,
    StopCheck,
    raise_if_stopped,
)
from storage import JobKind, NewSample

TOKENS_PER_WINDOW = 16
SECONDS_PER_WINDOW = 0.25  # of audio, per level
CHUNK_TOKENS = 4  # progress and should_stop granularity
CODEBOOK = 2048
STATE_DIM = 32
MAX_AUDIO_BYTES = 8 * 1024 * 1024
T = TypeVar("T")


@dataclass(frozen=True)
class LevelPlan:
    level: int
    start_tokens: int  # what is there before this run samples (a continued parent's codes)
    total_tokens: int


def windows_for(seconds: float) -> int:
    return max(1, math.ceil(round(seconds / SECONDS_PER_WINDOW, 6)))


def plan_levels(task: JobTask, params: JobParams) -> tuple[list[LevelPlan], dict[int, np.ndarray]]:
    """Which levels this job samples, and the codes it starts from (from the parent sample)."""
    n = params.n_samples
    given: dict[int, np.ndarray] = {}
    kind = task.job.kind
    if kind is JobKind.GENERATE:
        tokens = windows_for(params.seconds) * TOKENS_PER_WINDOW
        levels = [2] if params.levels == "top" else [2, 1, 0]
        return [LevelPlan(level, 0, tokens) for level in levels], given
    parent = task.parent
    if parent is None or parent.codes(2) is None:
        raise BadCheckpoint(f"job #{task.job.id} needs a parent sample with top-level codes")
    top = np.frombuffer(parent.codes(2) or b"", dtype="<i2").astype(np.int16)
    given[2] = np.tile(top, (n, 1))
    if kind is JobKind.UPSAMPLE:
        return [LevelPlan(level, 0, top.size) for level in (1, 0)], given
    added = windows_for(params.seconds) * TOKENS_PER_WINDOW
    plans = [LevelPlan(2, top.size, top.size + added)]
    if params.levels == "all":
        plans += [LevelPlan(level, 0, top.size + added) for level in (1, 0)]
    return plans, given


def _weights() -> np.ndarray:
    return np.random.default_rng(1234).standard_normal((STATE_DIM, STATE_DIM)) / math.sqrt(STATE_DIM)


def sample_window(
    seed: int, level: int, start: int, n_tokens: int, above: np.ndarray | None, weights: np.ndarray
) -> np.ndarray:
    """One window of codes: a function of (seed, level, start, codes above) only."""
    context = 0 if above is None else zlib.crc32(above[start : start + n_tokens].tobytes())
    rng = np.random.default_rng([seed, level, start, context])
    state = rng.standard_normal(STATE_DIM)
    out = np.empty(n_tokens, dtype=np.int16)
    for t in range(n_tokens):
        state = np.tanh(weights @ state + 0.1 * rng.standard_normal(STATE_DIM))
        out[t] = (int(np.argmax(state)) * 64 + int(rng.integers(64))) % CODEBOOK
    return out


def burn(weights: np.ndarray, work: int) -> None:
    """The compute a real prior would do per token (the result is thrown away)."""
    vector = np.ones(STATE_DIM)
    for _ in range(work):
        vector = np.tanh(weights @ vector)


def encode_checkpoint(codes: dict[int, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{f"level_{level}": array for level, array in codes.items()})
    return buffer.getvalue()


def decode_checkpoint(blob: bytes, n_samples: int) -> dict[int, np.ndarray]:
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as data:
            codes = {int(name.removeprefix("level_")): data[name].astype(np.int16) for name in data.files}
    except (ValueError, OSError, KeyError) as exc:
        raise BadCheckpoint(f"the stored checkpoint cannot be read ({exc}); cancel and start again") from None
    if any(array.ndim != 2 or array.shape[0] != n_samples for array in codes.values()):
        raise BadCheckpoint("the stored checkpoint does not match this job's number of samples")
    return codes


def tone(codes: np.ndarray, seconds: float) -> np.ndarray:
    """A sine whose pitch steps with the codes (continuous phase: no clicks)."""
    length = max(1, round(seconds * SAMPLE_RATE))
    per_code = np.repeat(codes.astype(np.float64), math.ceil(length / codes.size))[:length]
    frequency = 220.0 + per_code * 0.4
    phase = 2 * np.pi * np.cumsum(frequency) / SAMPLE_RATE
    return (0.3 * np.sin(phase)).astype(np.float32)


class ToyRunner:
    def __init__(self, device: DeviceSpec) -> None:
        self.device = device
        served = os.environ.get("JUKEBOT_TOY_MODELS")
        self.listed = frozenset(served.split(",") if served else MODELS)
        self.work = int(os.environ.get("JUKEBOT_TOY_WORK", "50"))
        log_dir = os.environ.get("JUKEBOT_TOY_LOG_DIR")
        self.log_dir = Path(log_dir) if log_dir else None
        model_dir = os.environ.get("JUKEBOT_TOY_MODEL_DIR")
        self.model_dir = Path(model_dir) if model_dir else None
        self.weights = _weights()

    @property
    def models(self) -> frozenset[str]:
        """As the real runner: with a model directory, the models complete in it, re-read each time."""
        return self.listed if self.model_dir is None else self.listed & available_models(self.model_dir)

    def _record(self, job_id: int, event: str, **fields: object) -> None:
        if self.log_dir is None:
            return
        line = json.dumps({"event": event, "job": job_id, "pid": os.getpid(), **fields}) + "\n"
        with open(self.log_dir / f"job-{job_id}.jsonl", "a") as log:  # one small append: atomic
            log.write(line)

    def run(self, task: JobTask, report: ProgressReporter, should_stop: StopCheck) -> list[NewSample]:
        job = task.job
        try:
            if self.model_dir is not None:
                require_checkpoints(self.model_dir, job.model)
            params = parse_params(job.params)
        except ModelFilesMissing as exc:
            raise ModelNotHere(str(exc)) from exc
        except (ModelFilesError, InvalidJobParams) as exc:
            raise JobFailed(str(exc)) from exc
        if params.artist == "!crash":
            raise RuntimeError("toy runner crashed on purpose")
        if params.artist == "!oom":
            raise OutOfMemory(self.device, "n_samples", "toy runner")
        n = params.n_samples
        plans, codes = plan_levels(task, params)
        if task.checkpoint is not None:
            codes = decode_checkpoint(task.checkpoint, n)
        for plan in plans:
            codes.setdefault(plan.level, np.zeros((n, 0), dtype=np.int16))
        if plans[0].level == 2 and plans[0].start_tokens and codes[2].shape[1] < plans[0].start_tokens:
            raise BadCheckpoint("the stored checkpoint is shorter than the parent sample")
        tokens_total = sum(plan.total_tokens - plan.start_tokens for plan in plans)
        done = sum(codes[plan.level].shape[1] - plan.start_tokens for plan in plans)
        self._record(job.id, "start", resumed_tokens=done)
        for plan in plans:
            done = self._sample_level(task, params, plan, codes, report, should_stop, done, tokens_total)
        report.progress(Stage.COMPRESSING, None, None, None, tokens_total, tokens_total)
        samples = self._samples(params, plans, codes)
        self._record(job.id, "done")
        return samples

    def _sample_level(
        self,
        task: JobTask,
        params: JobParams,
        plan: LevelPlan,
        codes: dict[int, np.ndarray],
        report: ProgressReporter,
        should_stop: StopCheck,
        done: int,
        tokens_total: int,
    ) -> int:
        level, n = plan.level, params.n_samples
        stage = Stage.SAMPLING if level == 2 else Stage.UPSAMPLING
        window_count = math.ceil((plan.total_tokens - plan.start_tokens) / TOKENS_PER_WINDOW)
        while codes[level].shape[1] < plan.total_tokens:
            start = codes[level].shape[1]
            window = (start - plan.start_tokens) // TOKENS_PER_WINDOW + 1  # counted from 1
            size = min(TOKENS_PER_WINDOW, plan.total_tokens - start)
            new = np.empty((n, size), dtype=np.int16)
            for chunk in range(0, size, CHUNK_TOKENS):
                raise_if_stopped(should_stop)
                count = min(CHUNK_TOKENS, size - chunk)
                for _ in range(count * n):
                    burn(self.weights, self.work)
                report.progress(stage, level, window, window_count, done + chunk + count, tokens_total)
            for i in range(n):
                above = codes.get(level + 1, None) if level < 2 else None
                row_above = None if above is None else above[i]
                new[i] = sample_window(params.seed + i, level, start, size, row_above, self.weights)
            codes[level] = np.concatenate([codes[level], new], axis=1)
            done += size
            self._record(task.job.id, "window", level=level, start=start)
            report.checkpoint(encode_checkpoint(codes))
            if params.artist == "!hang" and task.job.attempts == 0:
                self._record(task.job.id, "hang")
                threading.Event().wait()
        return done

    def _samples(
        self, params: JobParams, plans: list[LevelPlan], codes: dict[int, np.ndarray]
    ) -> list[NewSample]:
        finest = min(codes)
        seconds = codes[finest].shape[1] / TOKENS_PER_WINDOW * SECONDS_PER_WINDOW
        samples = []
        for i in range(params.n_samples):
            encoded = encode_to_fit(tone(codes[finest][i], seconds), SAMPLE_RATE, MAX_AUDIO_BYTES, ("ogg",))
            level_bytes = {f"codes_level_{level}": codes[level][i].astype("<i2").tobytes() for level in codes}
            samples.append(
                NewSample(
                    index=i,
                    seed=params.seed + i,
                    duration_seconds=seconds,
                    audio=encoded.data,
                    audio_format=encoded.format,
                    audio_bitrate=encoded.bitrate,
                    **level_bytes,
                )
            )
        return samples


def make_runner(device: DeviceSpec, options: RunnerOptions | None = None) -> ToyRunner:
    """The runner factory the pool imports as `tests.sampler.worker.toy_runner:make_runner`."""
    return ToyRunner(device)


def reference_codes(task: JobTask) -> dict[int, np.ndarray]:
    """The codes an uninterrupted run makes (sampled here, with no CPU burn and no reporting)."""
    params = parse_params(task.job.params)
    plans, codes = plan_levels(task, params)
    weights = _weights()
    for plan in plans:
        codes.setdefault(plan.level, np.zeros((params.n_samples, 0), dtype=np.int16))
        level = plan.level
        while codes[level].shape[1] < plan.total_tokens:
            start = codes[level].shape[1]
            size = min(TOKENS_PER_WINDOW, plan.total_tokens - start)
            rows = []
            for i in range(params.n_samples):
                above = codes[level + 1][i] if level < 2 else None
                rows.append(sample_window(params.seed + i, level, start, size, above, weights))
            codes[level] = np.concatenate([codes[level], np.stack(rows)], axis=1)
    return codes


def read_log(log_dir: Path, job_id: int) -> list[dict[str, object]]:
    path = Path(log_dir) / f"job-{job_id}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
