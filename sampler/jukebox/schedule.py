"""Sampling a request's levels: one after another, or several at once.

Levels go top first, each window after window. With overlap (rng="window" only) each level samples
in its own thread, on CUDA on its own stream, and a window starts as soon as the level above holds
the codes its conditioning reads (`windows.cond_span`): level 0 samples while level 1 stays ahead
of it. Each window's draws come from a generator seeded by (seed, level, window), so the codes are
those of sampling the levels in turn. rng="reference" draws every window from one continuing
stream, so its levels never overlap.

The state only changes under one lock, and every callback (`on_progress`, `on_window`,
`should_stop`) runs under it: they never run at once, and a checkpoint is a consistent snapshot
(whole windows, per level). A cancel or an error in one level stops the others at their next
progress report; the state then holds every window finished before.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from sampler.jukebox.cascade import (
    Cascade,
    CascadeState,
    LevelProgress,
    Progress,
    SamplingCancelled,
    SamplingError,
    SamplingRequest,
    window_seed,
)
from sampler.jukebox.labels import Label
from sampler.jukebox.prior import JukeboxPrior
from sampler.jukebox.windows import Window, cond_span


def overlap_by_default(device: torch.device) -> bool:
    """Levels overlap on CUDA (two streams keep the GPU busy); on the CPU they would only share cores."""
    return device.type == "cuda"


class _Stopped(Exception):
    """Another level failed or was cancelled (or the caller was interrupted): this one stops too."""


@dataclass
class _Level:
    """One level's windows and where it stands; changed under the scheduler's lock."""

    level: int
    windows: list[Window]
    labels: list[Label]
    done: int  # windows finished
    tokens_done: int  # new tokens of the finished windows
    window_tokens: int = 0  # new tokens of the window being sampled, so far
    sampling: bool = False

    @property
    def finished(self) -> bool:
        return self.done >= len(self.windows)

    @property
    def tokens_total(self) -> int:
        return sum(window.new_tokens for window in self.windows)

    def progress(self) -> LevelProgress:
        return LevelProgress(
            self.level,
            min(self.done + 1, len(self.windows)),
            len(self.windows),
            self.tokens_done + self.window_tokens,
            self.tokens_total,
            self.sampling,
        )


class LevelScheduler:
    """Samples one request's levels for `Cascade.sample`; `run()` once."""

    def __init__(
        self,
        cascade: Cascade,
        request: SamplingRequest,
        state: CascadeState,
        *,
        on_progress: Callable[[Progress], None] | None,
        on_window: Callable[[CascadeState], None] | None,
        should_stop: Callable[[], bool] | None,
        progress_every: int,
        overlap: bool,
    ) -> None:
        self.cascade, self.request, self.state = cascade, request, state
        self.on_progress, self.on_window, self.should_stop = on_progress, on_window, should_stop
        self.progress_every = progress_every
        self.order = tuple(sorted(set(request.levels), reverse=True))
        # A level's window plan depends on the codes it had when it began; levels above never
        # change a lower level's codes, so every level's base can be fixed now.
        for level in self.order:
            state.level_base.setdefault(level, state.codes[level].shape[1])
        self._levels = {level: self._prepare(level) for level in self.order}
        unfinished = sum(not run.finished for run in self._levels.values())
        self.overlap = overlap and request.rng == "window" and unfinished > 1
        self._lock = threading.Condition()
        self._priors_lock = threading.Lock()  # loading builds modules under a process-wide device context
        self._stopping = False
        self._failure: BaseException | None = None

    def _prepare(self, level: int) -> _Level:
        windows = self.cascade.plan(self.request, self.state, level)
        done = self.state.windows_done.get(level, 0)
        labeller = self.cascade._labellers[level]
        # one label per row: a style sweep conditions each sample on its own style
        labels = [
            labeller.label(style.artist, style.genre, style.lyrics, self.request.total_length)
            for style in self.request.sample_styles()
        ]
        return _Level(level, windows, labels, done, sum(w.new_tokens for w in windows[:done]))

    # ---- running

    def run(self) -> CascadeState:
        if self.overlap:
            return self._run_overlapped()
        # on the sampling device: draws from CUDA logits need a CUDA generator
        generator = torch.Generator(device=self.cascade.device)
        if self.request.rng == "reference":
            if self.state.rng_state is None:  # `Cascade.sample` gives a new state one; a resumed one has it
                raise SamplingError('rng="reference" needs the random generator state of the run it resumes')
            generator.set_state(self.state.rng_state)
        for level in self.order:
            self._sample_level(self._levels[level], generator)
        return self.state

    def _run_overlapped(self) -> CascadeState:
        device = self.cascade.device
        origin = torch.cuda.current_stream(device) if device.type == "cuda" else None
        threads = [
            threading.Thread(
                target=self._level_thread, args=(run, origin), name=f"sampling level {run.level}", daemon=True
            )
            for run in self._levels.values()
            if not run.finished
        ]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                thread.join()
        except BaseException:  # interrupted (Ctrl-C): stop the levels, then let it propagate
            self._stop_all()
            for thread in threads:
                thread.join()
            raise
        # Taken out of the scheduler, and out of this frame as it raises: the failure's traceback holds
        # the level threads' frames (the scheduler, the windows' tensors), and a cycle through them
        # would keep all of that, GPU memory too, until the garbage collector happened to run.
        failure, self._failure = self._failure, None
        try:
            if isinstance(failure, SamplingCancelled):
                raise SamplingCancelled(self.state.snapshot())  # with what the other levels finished since
            if failure is not None:
                raise failure
        finally:
            failure = None
        return self.state

    def _level_thread(self, run: _Level, origin: torch.cuda.Stream | None) -> None:
        try:
            with self._level_stream(origin):
                self._sample_level(run, torch.Generator(device=self.cascade.device))
        except BaseException as exc:
            with self._lock:
                if self._failure is None and not isinstance(exc, _Stopped):
                    self._failure = exc
                self._stopping = True
                self._lock.notify_all()

    @contextlib.contextmanager
    def _level_stream(self, origin: torch.cuda.Stream | None) -> Iterator[None]:
        """On CUDA, a stream of the level's own, ordered after what the caller queued before."""
        if origin is None:
            yield
            return
        stream = torch.cuda.Stream(device=self.cascade.device)
        stream.wait_stream(origin)
        try:
            with torch.cuda.stream(stream):
                yield
        finally:
            origin.wait_stream(stream)

    def _stop_all(self) -> None:
        with self._lock:
            self._stopping = True
            self._lock.notify_all()

    def _sample_level(self, run: _Level, generator: torch.Generator) -> None:
        if run.finished:
            return
        prior: JukeboxPrior | None = None
        labeller = self.cascade._labellers[run.level]
        for window in run.windows[run.done :]:
            view = self._wait_for_codes(run, window)
            if prior is None:
                prior = self._acquire(run.level)
            if self.request.rng == "window":
                generator.manual_seed(window_seed(self.request.seed, run.level, window.index))
            new_codes = self.cascade._sample_window(
                prior,
                labeller,
                run.labels,
                self.request,
                view,
                window,
                generator,
                lambda tokens: self._report(run, tokens),
                self.progress_every,
            )
            self._commit(run, window, new_codes.cpu(), generator)
        prior = None  # not held here while the source frees it
        with self._priors_lock:
            self.cascade.priors.release(run.level)

    def _acquire(self, level: int) -> JukeboxPrior:
        with self._priors_lock:
            return self.cascade.priors.acquire(level)

    # ---- under the lock

    def _wait_for_codes(self, run: _Level, window: Window) -> CascadeState:
        """Wait until the level above holds the codes `window` is conditioned on; a snapshot to read."""
        config = self.cascade.priors.config(run.level)
        needed = 0
        if config.is_upsampler:
            assert config.cond_downsample is not None
            needed = cond_span(window, config.n_ctx, config.cond_downsample)[1]
        with self._lock:
            while not self._holds(run.level + 1, needed):
                # levels in turn: the level above is finished (or not sampled) before this one begins
                assert self.overlap, f"level {run.level} would wait for level {run.level + 1}"
                self._lock.wait()
            run.sampling = True
            return self.state.snapshot()

    def _holds(self, level: int, codes: int) -> bool:
        if self._stopping:
            raise _Stopped
        above = self._levels.get(level)
        # a level not sampled here, or finished, has all the codes it will ever have
        return above is None or above.finished or self.state.codes[level].shape[1] >= codes

    def _report(self, run: _Level, new_tokens: int) -> None:
        with self._lock:
            if self._stopping:
                raise _Stopped
            run.window_tokens = new_tokens
            if self.on_progress is not None:
                self.on_progress(self._progress(run))
            if self.should_stop is not None and self.should_stop():
                self._stopping = True
                self._lock.notify_all()
                raise SamplingCancelled(self.state.snapshot())

    def _progress(self, run: _Level) -> Progress:
        mine = run.progress()
        return Progress(
            run.level,
            mine.window,
            mine.window_count,
            mine.tokens_done,
            mine.tokens_total,
            self.order,
            tuple(self._levels[level].progress() for level in self.order),
        )

    def _commit(self, run: _Level, window: Window, new_codes: Tensor, generator: torch.Generator) -> None:
        state = self.state
        with self._lock:
            if self._stopping:  # keep every checkpoint from before the stop, and nothing after it
                raise _Stopped
            state.codes[run.level] = torch.cat([state.codes[run.level], new_codes], dim=1)
            state.windows_done[run.level] = state.windows_done.get(run.level, 0) + 1
            run.done += 1
            run.tokens_done += window.new_tokens
            run.window_tokens = 0
            run.sampling = False
            if self.request.rng == "reference":
                state.rng_state = generator.get_state()
            self._lock.notify_all()
            if self.on_window is not None:
                self.on_window(state.snapshot())
