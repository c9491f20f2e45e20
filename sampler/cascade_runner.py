"""The real job runner: turns a claimed job into Jukebox samples with the cascade.

Built once per worker process (`make_runner(device, options)`), it keeps each model's cascade
loaded between jobs, and its priors too where the device has room (`resident_priors`). The model
directory, batch sizes and residency are runner options (`model_dir`, `max_batch_size`,
`resident_priors`) in the worker's config, which `jukebot run|worker` fill from their settings.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import math
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from sampler.audio import OutputFormat, encode_audio
from sampler.batch_sizes import (
    DEFAULT_MAX_BATCH_SIZE,
    BatchSizes,
    format_batch_sizes,
    parse_batch_sizes,
)
from sampler.engine_settings import AUTO, parse_switch, switch_value
from sampler.jobspec import (
    DEFAULT_SAMPLES,
    MAX_SAMPLES_PER_JOB,
    InvalidJobParams,
    JobParams,
    is_full_quality,
    parse_params,
)
from sampler.jukebox.cascade import (
    Cascade,
    CascadeState,
    NonFiniteLogits,
    Progress,
    SampleStyle,
    SamplingCancelled,
    SamplingError,
    SamplingRequest,
)
from sampler.jukebox.checkpoint import CheckpointError
from sampler.jukebox.decoding import DecodeOptions, decode_options
from sampler.jukebox.registry import MODEL_PREFERENCE, MODELS, SAMPLE_RATE
from sampler.jukebox.windows import prompt_length_samples, sample_length_samples
from sampler.loading import (
    LazyPriors,
    ModelDirectory,
    ModelFileUnusable,
    PriorDoesNotFit,
    SidecarFault,
    load_cascade,
    record_unusable,
    resident_estimate,
)
from sampler.model_files import (
    SIDECAR_FIX,
    ModelFilesError,
    ModelFilesMissing,
    available_models,
    default_model_dir,
    model_path,
    model_status,
    require_checkpoints,
    sidecar_path,
)
from sampler.residency import (
    DEFAULT_RESIDENT_PRIORS,
    ResidentPriors,
    keep_priors_resident,
    parse_resident_priors,
)
from sampler.units import format_bytes
from sampler.worker.contract import (
    DeviceSpec,
    JobDidNotFit,
    JobFailed,
    JobTask,
    LevelProgress,
    ModelNotHere,
    ProgressReporter,
    RunnerOptions,
    Stage,
    StopCheck,
    StopReason,
    raise_if_stopped,
)
from sampler.worker.memory import is_out_of_memory
from storage.models import JobKind
from storage.records import NewSample

log = logging.getLogger(__name__)

STORED_FORMAT: OutputFormat = (
    "ogg"  # Opus in Ogg; the bot re-encodes only when a server's upload limit is smaller
)
STORED_BITRATE = 160_000
LOWER_TEMPERATURE = 0.99  # the reference's temperature for the upsamplers


# (size, mtime_ns) of a checkpoint, then of the sidecars its architecture comes from (None: not there)
_Signature = tuple[tuple[int, int] | None, ...]


class InvalidJobInput(JobFailed):
    """The job's parent sample or prime cannot be sampled from; the message says why."""


# How long a worker serves no job of a model that did not fit in its device's free memory.
DOES_NOT_FIT_PAUSE_S = 600.0
# How long a model's priors load per level after running out of memory together, before the worker
# decides again (measuring free memory anew): what took the memory (another process on the GPU, a
# job's large batch) may be gone, and per-level loading reads every prior from disk each job.
PER_LEVEL_AFTER_OOM_S = 1800.0


class DecodeDidNotFit(RuntimeError):
    """The final decode ran out of memory even one sample at a time with the priors freed. Not a
    `JobFailed`: the worker retries the job (an attempt counted), which resumes from its checkpoint,
    where every window is sampled, and only decodes. The message must not read as out of memory
    (the runtime fails those at once)."""


# The checkpoint reader's advice, which the runner replaces with its own (verify, then download).
_READER_HINT = re.compile(r";?\s*(?:re-)?download it with `jukebot models download [^`]*`")


def codes_from_bytes(data: bytes | None) -> torch.Tensor | None:
    """Stored codes (int16, little-endian) as a tensor; ValueError for an odd number of bytes."""
    if not data:
        return None
    return torch.from_numpy(np.frombuffer(data, dtype="<i2").astype(np.int64))


def codes_to_bytes(codes: torch.Tensor) -> bytes:
    return codes.to(torch.int16).numpy().astype("<i2").tobytes()


def _sample_styles(params: JobParams, sings: bool) -> tuple[SampleStyle, ...] | None:
    """A style sweep's labels, row by row (lyrics only for a model that sings); None for one style."""
    if params.styles is None:
        return None
    styles = (params.style_of(index) for index in range(params.n_samples))
    return tuple(
        SampleStyle(style.artist, " ".join(style.genres), (style.lyrics or "") if sings else "")
        for style in styles
    )


def free_device_memory(device: DeviceSpec) -> int | None:
    """Free bytes on a GPU; None on the CPU, which has no memory budget of its own."""
    if not device.is_cuda:
        return None
    free, _total = torch.cuda.mem_get_info(device.name)
    return free


def batch_sizes_of_jobs(max_batch_size: BatchSizes) -> BatchSizes:
    """The batch sizes a job may fill: none has more than `MAX_SAMPLES_PER_JOB` samples."""
    level_0, level_1, level_2 = (min(size, MAX_SAMPLES_PER_JOB) for size in max_batch_size)
    return level_0, level_1, level_2


def warm_up_batch_sizes(max_batch_size: BatchSizes) -> tuple[int, ...]:
    """Per level, the batch a job of the default number of samples runs in."""
    return tuple(min(size, DEFAULT_SAMPLES) for size in max_batch_size)


class CascadeRunner:
    """A `sampler.worker.contract.JobRunner` backed by the Jukebox cascade."""

    def __init__(
        self,
        device: DeviceSpec,
        model_dir: Path,
        *,
        dtype: torch.dtype | None = None,
        max_batch_size: BatchSizes = DEFAULT_MAX_BATCH_SIZE,
        resident_priors: ResidentPriors = DEFAULT_RESIDENT_PRIORS,
        overlap_levels: bool | None = None,
        decode: DecodeOptions | None = None,
    ) -> None:
        self.device = device
        self.overlap_levels = overlap_levels  # None: the cascade's default for the device
        self.decode = decode
        self.model_dir = Path(model_dir)
        self.dtype = dtype or (torch.float16 if device.is_cuda else torch.float32)
        self.max_batch_size = max_batch_size
        self.resident_priors = resident_priors
        self._cascades: dict[str, Cascade] = {}
        self._resident: dict[str, bool] = {}  # per model, decided once (again after an out of memory)
        self._decide_again_at: dict[str, float] = {}  # model -> time.monotonic() of the next decision
        self._models_seen: frozenset[str] | None = None
        # checkpoint name -> `_signature` of a file found unusable, while it and the sidecars its
        # architecture comes from stay as they were (also recorded in the model directory's verification
        # cache, where that can be written)
        self._unusable: dict[str, _Signature] = {}
        # model -> time.monotonic() until which it is not served: it did not fit (`_does_not_fit`)
        self._does_not_fit_until: dict[str, float] = {}
        self._overlap_off: set[str] = set()  # models whose priors did not fit two at once

    @property
    def models(self) -> frozenset[str]:
        """The models complete in the model directory now (stat calls: the worker asks before each claim),
        less those with a file this runner found unusable."""
        unusable = self._still_unusable()
        now = time.monotonic()
        models = frozenset(
            name
            for name in available_models(self.model_dir)
            if unusable.isdisjoint(MODELS[name].checkpoints)
            and self._does_not_fit_until.get(name, now) <= now
        )
        if models != self._models_seen:
            self._models_seen = models
            statuses = model_status(self.model_dir)
            log.info(
                "model directory %s: %s",
                self.model_dir,
                "; ".join(f"{name} {status.summary}" for name, status in statuses.items()),
            )
        return models

    def _still_unusable(self) -> set[str]:
        """The files found unusable that have not changed since, nor their sidecars (a new copy, or a
        fixed sidecar, is tried again)."""
        for name, seen in list(self._unusable.items()):
            if self._signature(name) != seen:
                self._unusable.pop(name, None)
        return set(self._unusable)

    def _signature(self, name: str) -> _Signature | None:
        """(size, mtime_ns) of checkpoint `name`, of its sidecar and of the VQ-VAE's (a prior's
        architecture depends on both: None for one not there), as the verification cache keys a
        verdict; None when the checkpoint itself cannot be looked at (gone: `models` sees that)."""
        checkpoint = model_path(self.model_dir, name)
        paths = [
            checkpoint,
            *(sidecar_path(model_path(self.model_dir, of)) for of in dict.fromkeys((name, "vqvae"))),
        ]
        stats: list[tuple[int, int] | None] = []
        for path in paths:
            try:
                stat = path.stat()
            except OSError:
                stats.append(None)
            else:
                stats.append((stat.st_size, stat.st_mtime_ns))
        return None if stats[0] is None else tuple(stats)

    def _drop(self, model: str) -> None:
        """Forget `model`'s cascade and free its priors (loaded again from the files when next needed)."""
        cascade = self._cascades.pop(model, None)
        if cascade is not None and isinstance(cascade.priors, LazyPriors):
            cascade.priors.free()  # now: a traceback may still hold the cascade

    def _stop_serving(self, exc: ModelFileUnusable) -> str:
        """A file of the model is damaged, or its sidecar (or the VQ-VAE's) describes no architecture:
        record the verdict, so that `models` (of this worker, and of any other reading the same model
        directory) drops every model using it until the file or its sidecars change, and say what the
        operator should do: for a sidecar, fix it (fetching the checkpoint again changes nothing)."""
        self._drop(exc.model)
        detail = _READER_HINT.sub("", exc.detail)
        if exc.sidecar is not None and SIDECAR_FIX not in detail:
            detail = f"{exc.sidecar} does not describe its architecture ({detail}); {SIDECAR_FIX}"
        signature = self._signature(exc.name)
        if signature is not None:  # gone meanwhile: `models` sees that
            self._unusable[exc.name] = signature
        where = "recorded in the model directory's verification cache"
        try:
            record_unusable(self.model_dir, exc, detail)
        except OSError as err:
            where = f"remembered until the worker restarts (the verification cache cannot be written: {err})"
        self._models_seen = None  # log the model directory's status at the next claim
        if exc.sidecar is not None:  # the detail names it and says how to fix it
            return (
                f"The sidecar of a file of {exc.model} ({exc.name}) cannot be used: {detail}. This worker "
                f"stops serving the models that use it ({where}) until the sidecar changes; the "
                "checkpoint itself is not damaged, and downloading it again does not help."
            )
        return (
            f"A file of {exc.model} cannot be used ({exc.name}): {detail}. This worker stops serving the "
            f"models that use it ({where}). Run `jukebot models verify {exc.model}` (it moves the damaged "
            f"file aside), then `jukebot models download {exc.model}`."
        )

    def _load_per_level(self, model: str, why: str) -> None:
        """The priors of `model` do not fit on the device together: from now on each level's prior is
        loaded when its level samples and freed after."""
        self._resident[model] = False
        self._decide_again_at[model] = time.monotonic() + PER_LEVEL_AFTER_OOM_S
        self._drop(model)
        log.warning(
            "%s: %s priors do not fit on %s together; they load per level for the next %g minutes",
            why,
            model,
            self.device,
            PER_LEVEL_AFTER_OOM_S / 60,
        )

    def _does_not_fit(self, model: str, what: str, failure: BaseException) -> str:
        """`what` of the model (a prior alone, its VQ-VAE, a window of one sample) does not fit in the
        device's memory free now: this worker serves the model no more for DOES_NOT_FIT_PAUSE_S (a worker
        with more memory may take its jobs; another process on the GPU may free some meanwhile). The
        job's message (`JobDidNotFit`), which must not read as out of memory: torch's words are logged."""
        log.warning("%s: %s of %s does not fit: %s", self.device, what, model, str(failure).strip()[:200])
        self._drop(model)
        gc.collect()
        if self.device.is_cuda:
            torch.cuda.empty_cache()
        self._does_not_fit_until[model] = time.monotonic() + DOES_NOT_FIT_PAUSE_S
        self._models_seen = None  # log the model directory's status at the next claim
        return (
            f"the {model} model ({what}) does not fit in the memory {self.device} has free; this worker "
            f"takes no {model} job for the next {DOES_NOT_FIT_PAUSE_S / 60:g} minutes (one with more "
            "memory may)"
        )

    def _not_fitting(self, model: str, dtype: torch.dtype, what: str, failure: BaseException) -> Exception:
        """What to raise when `what` of the model does not fit even alone: in the runner's dtype,
        JobDidNotFit (`_does_not_fit`: the model is paused here); in the wider `dtype` a job whose logits
        overflowed needs to go on, JobFailed saying so (the model fits this worker in its own dtype)."""
        if dtype == self.dtype:
            return JobDidNotFit(self._does_not_fit(model, what, failure))
        return JobFailed(
            f"This job's logits stopped being numbers in {dtype_name(self.dtype)} (an overflow), and going "
            f"on in {dtype_name(dtype)} needs more memory than {self.device} has free ({what} does not "
            "fit). Its finished windows are kept; try another seed or a lower temperature."
        )

    def cascade(self, model: str, dtype: torch.dtype | None = None) -> Cascade:
        """`model`'s cascade, loaded when not yet (dropping any other); `dtype` other than the runner's:
        its priors in it and loaded per level, for a job whose logits were not numbers in the runner's
        dtype (`wider_dtype`; the next job loads the runner's dtype again)."""
        dtype = dtype or self.dtype
        keep = self.keeps_priors(model) and dtype == self.dtype
        loaded = self._cascades.get(model)
        priors = None if loaded is None else loaded.priors
        if isinstance(priors, LazyPriors) and (priors.dtype, priors.keep) != (dtype, keep):
            self._drop(model)
            loaded = None
        if loaded is not None and not keep:
            # its priors load from the files with each level: fail before sampling if one is gone
            require_checkpoints(self.model_dir, model)
        if loaded is None:
            # one model's priors at a time on the device: drop the others first
            self._cascades.clear()
            if self.device.is_cuda:
                torch.cuda.empty_cache()
            loaded = self._cascades[model] = load_cascade(
                self.model_dir,
                model,
                device=self.device.name,
                dtype=dtype,
                keep_priors=keep,
                decode=self.decode,
            )
        return loaded

    def _overlaps(self, model: str) -> bool | None:
        """Levels sampled at once hold two or three priors together: only when they stay resident, and
        not once a prior did not fit beside another (`_overlap_off`)."""
        if model in self._overlap_off or (self.overlap_levels is None and not self.keeps_priors(model)):
            return False
        return self.overlap_levels

    def keeps_priors(self, model: str) -> bool:
        """Whether `model`'s priors stay loaded across levels and jobs (decided and logged once, and
        again at the first job PER_LEVEL_AFTER_OOM_S after they ran out of memory together)."""
        if model not in self._resident:
            self._resident[model] = self._decide_residency(model)
        return self._resident[model]

    def _decide_residency(self, model: str) -> bool:
        setting = self.resident_priors
        # measured with no other model loaded: `cascade` drops them first
        free = free_device_memory(self.device) if setting == "auto" else None
        if free is None:
            keep = keep_priors_resident(setting, None, 0)
            log.info(
                "%s priors on %s: %s (resident_priors=%s)",
                model,
                self.device,
                "resident" if keep else "loaded per level",
                setting,
            )
            return keep
        # KV caches for the most samples a job has, not a batch size past it (which no job fills: 64
        # read as 8 times the memory, and a 20-digit one overflowed).
        sizes = batch_sizes_of_jobs(self.max_batch_size)
        estimate = resident_estimate(ModelDirectory(self.model_dir, model), self.dtype, sizes)
        keep = keep_priors_resident(setting, free, estimate.total)
        log.info(
            "%s priors on %s: %s (resident_priors=%s): they need %s at batch sizes %s; %s free",
            model,
            self.device,
            "resident" if keep else "loaded per level",
            setting,
            estimate.describe(),
            format_batch_sizes(sizes),
            format_bytes(free),
        )
        return keep

    def warm_up(self, alive: Callable[[], None] = lambda: None) -> None:
        """Called once at worker start, before the first claim: load the cascade of the model the bot
        picks first among those served (one model's priors are loaded at a time) and, its priors
        resident, every prior, then let the cascade prepare its decoders at the batch sizes; `alive`
        after each of these steps (`WarmsUp`)."""
        served = self.models
        model = next((name for name in MODEL_PREFERENCE if name in served), None)
        if model is None:
            log.info("warm-up: no model is complete in %s; nothing to load", self.model_dir)
            return
        try:
            cascade = self.cascade(model)
            alive()
            if not self.keeps_priors(model):
                log.info("warm-up: %s priors load with each level; only its VQ-VAE is loaded now", model)
                return
            for level in range(cascade.levels):
                cascade.priors.acquire(level)
                alive()
            # compiled and captured decoders for the batches a default job samples in
            cascade.warm_up(warm_up_batch_sizes(self.max_batch_size), alive)
        except ModelFileUnusable as exc:  # the worker serves the other models
            log.error("warm-up: %s", self._stop_serving(exc))
            return
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            # more than the estimate: jobs load each level's prior and free it after
            self._load_per_level(model, "warm-up")
            raise

    # ---- building the request

    def plan(self, task: JobTask, cascade: Cascade) -> SamplingRequest:
        job = task.job
        params = parse_params(job.params)
        sings = MODELS[job.model].has_lyrics
        lyrics = params.lyrics if sings else ""
        top_hop = cascade.hops[2]
        prompt = codes = None
        levels: tuple[int, ...] = (0, 1, 2) if is_full_quality(params) else (2,)
        new_length = sample_length_samples(params.seconds)
        if job.kind == JobKind.GENERATE and task.prime is None:
            mode, sample_length = "ancestral", new_length
        elif job.kind == JobKind.GENERATE:
            assert task.prime is not None
            if len(task.prime.pcm) % 2:  # 16-bit samples: a hand edit or a partial restore cut one
                raise InvalidJobInput(
                    f"The saved audio of clip #{job.prime_id} is damaged (an odd number of bytes): queue "
                    "the job again with the clip attached."
                )
            pcm = np.frombuffer(task.prime.pcm, dtype="<i2").astype(np.float32) / 32768.0
            wanted = len(pcm) if params.prime_seconds is None else int(params.prime_seconds * SAMPLE_RATE)
            length = prompt_length_samples(min(wanted, len(pcm)) / SAMPLE_RATE)
            if length < top_hop:
                raise InvalidJobInput(
                    "The prime clip is too short to continue: send at least a second of audio."
                )
            if new_length <= length:
                raise InvalidJobInput(
                    f"The length ({params.seconds:g} s) includes the prime and must be longer than it "
                    f"({length / SAMPLE_RATE:.2f} s)."
                )
            prompt = torch.from_numpy(pcm[:length].copy()).unsqueeze(0).repeat(params.n_samples, 1)
            # `seconds` is the whole result, prime included (as the bot asks for it)
            mode, sample_length = "primed", new_length
        else:
            parent = task.parent
            if parent is None:
                raise InvalidJobInput(f"This {job.kind} job has no sample to work on.")
            try:
                levels_codes = [codes_from_bytes(parent.codes(level)) for level in range(3)]
            except ValueError:  # an odd number of bytes: not int16 codes
                raise InvalidJobInput(
                    f"The saved codes of sample {parent.id} are damaged, so it cannot be used to "
                    f"{job.kind}: pick another sample."
                ) from None
            top = levels_codes[2]
            if top is None:
                raise InvalidJobInput(f"Sample {parent.id} has no top-level codes to {job.kind}.")
            codes = tuple(
                None if c is None else c.unsqueeze(0).repeat(params.n_samples, 1) for c in levels_codes
            )
            parent_length = top.shape[0] * top_hop
            if job.kind == JobKind.UPSAMPLE:
                mode, sample_length, levels = "upsample", parent_length, (0, 1)
            else:
                mode, sample_length = "continue", parent_length + new_length
                if is_full_quality(params):
                    # lower levels of the parent (if any) are extended; missing ones are sampled in full
                    levels = (0, 1, 2)
        # the labels' song length; at least the model's minimum (its own config, tiny models included)
        total = max(int((params.total_seconds or 0) * SAMPLE_RATE), sample_length)
        top_config = cascade.priors.config(2)
        if top_config.min_duration:
            total = max(total, int(np.ceil(top_config.min_duration * SAMPLE_RATE)))
        return SamplingRequest(
            mode=mode,  # type: ignore[arg-type]
            sample_length=sample_length,
            total_length=total,
            n_samples=params.n_samples,
            artist=params.artist,
            genre=" ".join(params.genres),
            lyrics=lyrics,
            styles=_sample_styles(params, sings),
            levels=levels,
            temperature=(LOWER_TEMPERATURE, LOWER_TEMPERATURE, params.temperature),
            hop_fraction=params.hop_fraction,
            max_batch_size=self.max_batch_size,
            seed=params.seed,
            prompt=prompt,
            codes=codes,
        )

    # ---- running

    def run(self, task: JobTask, report: ProgressReporter, should_stop: StopCheck) -> list[NewSample]:
        model = task.job.model
        if self._decide_again_at.get(model, math.inf) <= time.monotonic():  # between jobs, not tries
            del self._decide_again_at[model]
            self._resident.pop(model, None)
        try:
            resume: CascadeState | None = None
            batch: BatchSizes | None = None
            dtype = self.dtype
            while True:
                try:
                    return self._run(task, report, should_stop, resume, batch, dtype)
                except _TryAgain as retry:
                    resume, batch, dtype = retry.state, retry.batch or batch, retry.dtype or dtype
                # out of the handler: the out-of-memory traceback, and the priors its frames held, is gone
                gc.collect()
                if self.device.is_cuda:
                    torch.cuda.empty_cache()
        except ModelFilesMissing as exc:  # gone since the claim: back to the queue for a worker that has it
            self._drop(task.job.model)
            raise ModelNotHere(str(exc)) from exc
        except ModelFileUnusable as exc:  # damaged: every job would read it again; a worker with a good copy
            raise ModelNotHere(f"{self._stop_serving(exc)} The job goes back to the queue.") from exc
        except (ModelFilesError, InvalidJobParams) as exc:
            # Jukebox's own failures that already say what to do; the runtime knows only JobFailed.
            raise JobFailed(str(exc)) from exc
        except SidecarFault as exc:  # a sidecar to fix, not a file to fetch again
            raise JobFailed(f"A model file of {task.job.model} cannot be used: {exc}.") from exc
        except CheckpointError as exc:  # a damaged model file: the next attempt would read it again
            model = task.job.model
            raise JobFailed(
                f"A model file of {model} cannot be used: {exc}. Run `jukebot models verify {model}` "
                f"(it moves a damaged file aside), then `jukebot models download {model}`."
            ) from exc

    @staticmethod
    def _saved_state(task: JobTask, cascade: Cascade, request: SamplingRequest) -> CascadeState | None:
        """The job's checkpoint to go on from; None to start over when it cannot be this job's (damaged,
        or written by a version that planned otherwise): each window's draws are seeded by (seed, level,
        window), so the run makes the codes an unbroken one makes, and the job is not lost for it."""
        if not task.checkpoint:
            return None
        try:
            state = CascadeState.from_bytes(task.checkpoint)
            cascade.check_state(request, state)
        except SamplingError as exc:
            log.warning("job #%s: its saved progress cannot be used (%s); starting it over", task.job.id, exc)
            return None
        return state

    def _run(
        self,
        task: JobTask,
        report: ProgressReporter,
        should_stop: StopCheck,
        resume: CascadeState | None = None,
        batch: BatchSizes | None = None,
        dtype: torch.dtype | None = None,
    ) -> list[NewSample]:
        """One try at the job; `resume`: the state to go on from instead of the task's checkpoint, and
        `batch` the batch sizes to sample at instead of the runner's (a retry in this process);
        `dtype`: the priors' (when not the runner's: the logits overflowed it, `wider_dtype`), loaded per
        level (more memory than the residency decision planned for)."""
        job = task.job
        dtype = dtype or self.dtype
        widened = dtype != self.dtype
        report.progress(Stage.LOADING, None, None, None, 0, 1)
        try:
            cascade = self.cascade(job.model, dtype)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            raise self._not_fitting(job.model, dtype, "its VQ-VAE", exc) from None
        raise_if_stopped(should_stop)
        request = self.plan(task, cascade)
        if batch is not None:
            request = dataclasses.replace(request, max_batch_size=batch)
        try:
            cascade.check(request)
        except SamplingError as exc:
            raise JobFailed(f"This job cannot be sampled: {exc}.") from None
        state = resume if resume is not None else self._saved_state(task, cascade, request)
        if request.mode == "primed" and state is None:
            report.progress(Stage.ENCODING_PRIME, None, None, None, 0, 1)
        initial = state or cascade.initial_state(request)
        level_tokens = {
            level: sum(w.new_tokens for w in cascade.plan(request, initial, level))
            for level in request.levels
        }
        # tokens of lower levels weigh less: one top token costs about as much as one lower token
        total_tokens = sum(level_tokens.values())

        def on_progress(progress: Progress) -> None:
            # levels may sample at once (on CUDA): each says where it stands
            levels = [
                LevelProgress(p.level, p.window, p.window_count, p.tokens_done, p.tokens_total, p.sampling)
                for p in progress.by_level
            ]
            # "sampling" until the top level is done, though lower levels may sample beside it
            top_level_left = progress.level == 2 or any(
                p.level == 2 and p.tokens_done < p.tokens_total for p in levels
            )
            report.progress(
                Stage.SAMPLING if top_level_left else Stage.UPSAMPLING,
                progress.level,
                progress.window,
                progress.window_count,
                sum(p.tokens_done for p in levels),
                total_tokens,
                levels=levels,
            )

        stop_reason: list[StopReason] = []
        latest: list[CascadeState] = []  # the newest window's state, to retry from

        def on_window(current: CascadeState) -> None:
            snapshot = current.snapshot()
            latest[:] = [snapshot]
            # serialised only if the worker stores it (it keeps the newest of fast windows)
            report.checkpoint(snapshot.to_bytes)

        def stop() -> bool:
            reason = should_stop()
            if reason is not None:
                stop_reason.append(reason)
                return True
            return False

        try:
            final = cascade.sample(
                request,
                initial,
                on_progress=on_progress,
                on_window=on_window,
                should_stop=stop,
                overlap_levels=False if widened else self._overlaps(job.model),
            )
        except SamplingCancelled:
            raise_if_stopped(lambda: stop_reason[-1] if stop_reason else StopReason.SHUTDOWN)
            raise
        except NonFiniteLogits as exc:
            newest = latest[0] if latest else state
            wider = wider_dtype(dtype, self.device)
            if wider is None:
                raise JobFailed(
                    f"This job cannot be sampled: {exc}, in full precision (float32). The {job.model} "
                    f"model's files may hold damaged weights: run `jukebot models verify {job.model}`."
                ) from None
            # float16 overflowed (Jukebox's activations reach its 65504 now and then): the windows
            # before stay, the rest of this job samples with float32's range
            log.warning(
                "job #%s: %s in %s; going on from its newest window in %s",
                job.id,
                exc,
                dtype_name(dtype),
                dtype_name(wider),
            )
            raise _TryAgain(newest, dtype=wider) from None
        except SamplingError as exc:
            raise JobFailed(f"This job cannot be sampled: {exc}.") from None
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            newest = latest[0] if latest else state
            if self.keeps_priors(job.model) and not widened:
                # the priors held together (and their caches) did not fit: load them per level and go
                # on from the newest window, as the warm-up does
                self._load_per_level(job.model, f"job #{job.id}")
                raise _TryAgain(newest) from None
            if isinstance(exc, PriorDoesNotFit) and not widened and self._overlaps(job.model) is not False:
                # the level above still held its prior: sample the levels one after the other
                self._overlap_off.add(job.model)
                log.warning(
                    "job #%s: %s beside another; levels sample one at a time from now on", job.id, exc
                )
                raise _TryAgain(newest) from None
            if isinstance(exc, PriorDoesNotFit):  # alone: not the job's doing, and no job of it fits here
                raise self._not_fitting(job.model, dtype, f"its level-{exc.level} prior", exc) from None
            level_0, level_1, level_2 = (min(size, request.n_samples) for size in request.max_batch_size)
            batch_now: BatchSizes = (level_0, level_1, level_2)
            smaller: BatchSizes = (max(level_0 // 2, 1), max(level_1 // 2, 1), max(level_2 // 2, 1))
            if smaller != batch_now:
                # a sample's draws do not depend on the batch it is in: the same codes, in more batches
                log.warning(
                    "job #%s: out of memory on %s sampling %s at once (%s); going on from its newest "
                    "window at %s",
                    job.id,
                    self.device,
                    format_batch_sizes(batch_now),
                    str(exc).strip()[:120],
                    format_batch_sizes(smaller),
                )
                raise _TryAgain(newest, smaller) from None
            raise self._not_fitting(job.model, dtype, "a window of one sample", exc) from None
        raise_if_stopped(should_stop)
        report.progress(Stage.DECODING, None, None, None, total_tokens, total_tokens)
        return self.samples(task, cascade, request, final, should_stop)

    def decode_audio(
        self, cascade: Cascade, codes: torch.Tensor, level: int, should_stop: StopCheck | None = None
    ) -> np.ndarray:
        """Audio (N, T) of codes (N, tokens), decoded one sample at a time: the decode then needs the
        memory of one sample only, and each sample's audio is the same whatever the number of samples
        (a batch's convolutions round differently, by about an int16 step at most). Out of memory, it frees
        the priors (they load again with the next job) and tries again; still out of memory,
        `DecodeDidNotFit`. `should_stop` is asked before each sample: a long decode (minutes on a CPU)
        stops for a shutdown as sampling does, its windows all stored."""
        decoded = []
        for index in range(codes.shape[0]):
            if should_stop is not None:
                raise_if_stopped(should_stop)
            decoded.append(self._decode_one(cascade, codes[index : index + 1], level))
        return np.concatenate(decoded)

    def _decode_one(self, cascade: Cascade, codes: torch.Tensor, level: int) -> np.ndarray:
        while True:
            try:
                return cascade.decode(codes, level).numpy()
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                failure = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
            # out of the handler: the traceback's frames no longer hold the decode's tensors
            gc.collect()
            priors = cascade.priors
            if not (isinstance(priors, LazyPriors) and priors.loaded):
                break
            log.warning("decoding on %s ran out of memory (%s): freeing the priors", self.device, failure)
            priors.free()
        log.warning("decoding one sample on %s ran out of memory, the priors freed: %s", self.device, failure)
        raise DecodeDidNotFit(
            f"the audio did not fit on {self.device} to decode, even one sample at a time, with the model "
            "freed (a try from the saved progress only decodes: on a worker with more memory free, it "
            "may fit; else ask for a shorter song)"
        )

    def samples(
        self,
        task: JobTask,
        cascade: Cascade,
        request: SamplingRequest,
        state: CascadeState,
        should_stop: StopCheck | None = None,
    ) -> list[NewSample]:
        """Decode each sample's finest complete level and store it compressed, with every level's codes;
        `should_stop` is asked before each sample's decode and encode."""
        complete = [
            level
            for level in range(3)
            if state.codes[level].shape[1] * cascade.hops[level] >= request.sample_length
        ]
        finest = min(complete)
        audio = self.decode_audio(cascade, state.codes[finest], finest, should_stop)
        params: JobParams = parse_params(task.job.params)
        out = []
        for index in range(request.n_samples):
            if should_stop is not None:
                raise_if_stopped(should_stop)
            levels = {
                f"codes_level_{level}": codes_to_bytes(state.codes[level][index])
                for level in range(3)
                if state.codes[level].shape[1]
            }
            out.append(
                NewSample(
                    index=index,
                    seed=params.seed,
                    duration_seconds=request.sample_length / SAMPLE_RATE,
                    audio=encode_audio(audio[index], SAMPLE_RATE, STORED_FORMAT, STORED_BITRATE),
                    audio_format=STORED_FORMAT,
                    audio_bitrate=STORED_BITRATE,
                    **levels,  # type: ignore[arg-type]
                )
            )
        return out


class _TryAgain(Exception):
    """Try the job again from `state`: out of memory, with the priors loaded per level (they did not
    fit resident together) or at the smaller `batch` sizes; or, its logits not numbers in the dtype it
    sampled in, in the wider `dtype`."""

    def __init__(
        self, state: CascadeState | None, batch: BatchSizes | None = None, *, dtype: torch.dtype | None = None
    ) -> None:
        super().__init__("trying again from the newest window")
        self.state, self.batch, self.dtype = state, batch, dtype


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def wider_dtype(dtype: torch.dtype, device: DeviceSpec) -> torch.dtype | None:
    """What to go on in after logits that were not numbers in `dtype`: from float16, bfloat16 (float32's
    range at float16's memory) where the device computes it (CUDA from compute capability 8, the CPU),
    else float32; from bfloat16, float32; from float32, nothing."""
    if dtype == torch.float16:
        has_bfloat16 = not device.is_cuda or torch.cuda.get_device_capability(device.index)[0] >= 8
        return torch.bfloat16 if has_bfloat16 else torch.float32
    return torch.float32 if dtype != torch.float32 else None


def make_runner(device: DeviceSpec, options: RunnerOptions | None = None) -> CascadeRunner:
    """The runner factory named by `jukebot run|worker` (`sampler.cascade_runner:make_runner`).

    Options: `model_dir` (default: the settings' default), `max_batch_size` (e.g. `16,16,3`),
    `resident_priors` (`auto`, `on` or `off`), `decode_path` / `decode_compile` / `decode_kernels` (the
    sampling loop; default: the device's, see `decode_options`) and `overlap_levels` (`auto`, `on` or
    `off`).
    """
    options = options or {}
    model_dir = Path(options["model_dir"]) if options.get("model_dir") else default_model_dir()
    sizes = options.get("max_batch_size", "").strip()
    resident = parse_resident_priors(options.get("resident_priors") or DEFAULT_RESIDENT_PRIORS)
    decode = decode_options(
        device.name, options.get("decode_path"), options.get("decode_compile"), options.get("decode_kernels")
    )
    overlap = switch_value(parse_switch("overlap_levels", options.get("overlap_levels") or AUTO))
    if device.is_cuda:
        # cuBLAS keeps a workspace per stream; a fixed one keeps levels sampled at once on two
        # streams deterministic (resumed jobs reproduce their codes). Read at its first call.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return CascadeRunner(
        device,
        model_dir,
        max_batch_size=parse_batch_sizes(sizes) if sizes else DEFAULT_MAX_BATCH_SIZE,
        resident_priors=resident,
        overlap_levels=overlap,
        decode=decode,
    )
