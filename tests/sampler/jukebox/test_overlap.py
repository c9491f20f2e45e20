"""Levels sampled at once (`overlap_levels`): the same codes as in turn, resumable, stoppable.

The scheduling is observed, not timed: `HeldCascade` holds one level's window at its start until
an event, so another level is known to sample meanwhile.
"""

from __future__ import annotations

import gc
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
import torch

from sampler.jukebox.cascade import (
    Cascade,
    CascadeState,
    PriorSource,
    Progress,
    SamplingCancelled,
    SamplingRequest,
)
from sampler.jukebox.decoding import DecodeOptions, WindowDecoder
from sampler.jukebox.prior import JukeboxPrior, PriorConfig
from sampler.jukebox.schedule import overlap_by_default
from sampler.jukebox.windows import Window
from tests.sampler.jukebox.conftest import make_tiny_vqvae
from tests.sampler.jukebox.test_cascade import make_cascade, request
from tests.sampler.jukebox.tiny_priors import tiny_prior

pytestmark = pytest.mark.usefixtures("single_thread")

WAIT_SECONDS = 60.0  # only reached if the scheduler is broken (a level that never samples)


class HeldCascade(Cascade):
    """A cascade whose windows can be held at their start (outside the scheduler's lock), or fail."""

    def __init__(self, base: Cascade, priors: PriorSource | None = None) -> None:
        super().__init__(base.vqvae, priors or base.priors)
        self.holds: dict[tuple[int, int], threading.Event] = {}  # (level, window index) -> go
        self.fail_at: tuple[int, int] | None = None

    def _sample_window(
        self,
        prior: Any,
        labeller: Any,
        labels: Any,
        request: Any,
        state: Any,
        window: Window,
        *rest: Any,
    ) -> torch.Tensor:
        go = self.holds.get((window.level, window.index))
        if go is not None and not go.wait(WAIT_SECONDS):
            raise AssertionError(f"level {window.level} window {window.index} was held for good")
        if (window.level, window.index) == self.fail_at:
            raise RuntimeError(f"broken at level {window.level} window {window.index}")
        return super()._sample_window(prior, labeller, labels, request, state, window, *rest)


@pytest.fixture(scope="module")
def cascade() -> Cascade:
    torch.set_num_threads(1)
    return make_cascade()


@pytest.fixture(scope="module")
def in_turn(cascade: Cascade) -> CascadeState:
    """Every level, one after another: what overlapping must reproduce."""
    return cascade.sample(request(), overlap_levels=False)


@pytest.fixture
def held(cascade: Cascade) -> Iterator[HeldCascade]:
    held = HeldCascade(cascade)
    yield held
    for go in held.holds.values():
        go.set()  # never leave a thread waiting
    assert not sampling_threads()


def sampling_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("sampling level")]


def same_codes(a: CascadeState, b: CascadeState) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.codes, b.codes, strict=True))


def upsample_request(top: CascadeState) -> SamplingRequest:
    return request(mode="upsample", levels=(0, 1), codes=(None, None, top.codes[2]))


def hold_level_one(
    window: int, held: HeldCascade, until_level_zero: int = 1
) -> Callable[[CascadeState], None]:
    """An on_window that lets level 1's window `window` start once level 0 finished `until_level_zero`."""
    go = held.holds.setdefault((1, window), threading.Event())

    def on_window(state: CascadeState) -> None:
        if state.windows_done.get(0, 0) >= until_level_zero:
            go.set()

    return on_window


def committed_levels(windows_done: list[dict[int, int]]) -> list[int]:
    """The level that finished each window, from the `windows_done` of successive checkpoints."""
    before: dict[int, int] = {}
    levels = []
    for now in windows_done:
        (level,) = [level for level in now if now[level] != before.get(level, 0)]
        levels.append(level)
        before = now
    return levels


def test_overlapping_levels_give_the_codes_of_levels_in_turn(cascade: Cascade, in_turn: CascadeState) -> None:
    full = cascade.sample(request(), overlap_levels=True)
    assert same_codes(full, in_turn)
    upsampled = cascade.sample(upsample_request(in_turn), overlap_levels=True)
    assert same_codes(upsampled, in_turn)
    assert upsampled.windows_done == {1: 4, 0: 8}
    # negative control: another seed gives other codes
    other = cascade.sample(replace(upsample_request(in_turn), seed=78), overlap_levels=True)
    assert not torch.equal(other.codes[0], in_turn.codes[0])


def test_a_lower_level_window_starts_once_the_codes_it_reads_are_there(
    held: HeldCascade, in_turn: CascadeState
) -> None:
    # Level-0 window j reads level-1 codes [32j, 32j + 32): windows 0 and 1 need only level 1's first
    # window (64 codes). Level 1's second window waits until level 0 finished two: only a scheduler
    # that overlaps, and waits for no more than the codes read, gets past it.
    windows: list[dict[int, int]] = []
    threads: set[str] = set()
    release = hold_level_one(1, held, until_level_zero=2)
    reports: list[Progress] = []

    def on_window(state: CascadeState) -> None:
        windows.append(dict(state.windows_done))
        threads.add(threading.current_thread().name)
        assert 32 * state.windows_done.get(0, 0) <= state.codes[1].shape[1]  # never ahead of its input
        release(state)

    final = held.sample(
        upsample_request(in_turn), on_window=on_window, on_progress=reports.append, overlap_levels=True
    )
    assert same_codes(final, in_turn)
    assert {1: 1, 0: 2} in windows
    assert windows[-1] == {1: 4, 0: 8}
    assert threads == {"sampling level 1", "sampling level 0"}
    # both levels reported sampling at once; each level's tokens only grow, and end complete
    assert any([lp.level for lp in p.by_level if lp.sampling] == [1, 0] for p in reports)
    assert all(p.levels == (1, 0) and [lp.level for lp in p.by_level] == [1, 0] for p in reports)
    for level, total in ((1, 256), (0, 512)):
        done = [lp.tokens_done for p in reports for lp in p.by_level if lp.level == level]
        assert done == sorted(done) and done[-1] == total
        mine = [p for p in reports if p.level == level]
        assert mine[-1].tokens_done == mine[-1].tokens_total == total
        assert mine[-1].window == mine[-1].window_count == total // 64


def test_reference_rng_never_overlaps(cascade: Cascade, in_turn: CascadeState) -> None:
    windows: list[dict[int, int]] = []
    threads: set[str] = set()

    def on_window(state: CascadeState) -> None:
        windows.append(dict(state.windows_done))
        threads.add(threading.current_thread().name)

    cascade.sample(
        replace(upsample_request(in_turn), rng="reference"), on_window=on_window, overlap_levels=True
    )
    assert committed_levels(windows) == [1] * 4 + [0] * 8
    assert threads == {threading.current_thread().name}


def test_resuming_from_a_checkpoint_taken_mid_overlap_equals_an_unbroken_run(
    cascade: Cascade, held: HeldCascade, in_turn: CascadeState
) -> None:
    saved: list[bytes] = []
    release = hold_level_one(3, held)

    def on_window(state: CascadeState) -> None:
        saved.append(state.to_bytes())
        release(state)

    held.sample(request(), on_window=on_window, overlap_levels=True)
    states = [CascadeState.from_bytes(blob) for blob in saved]
    mid = [s for s in states if 0 < s.windows_done.get(0, 0) and s.windows_done.get(1, 0) < 4]
    assert mid, "no checkpoint with both levels part-way"
    checkpoint = mid[0]
    for overlap in (True, False):
        resumed = cascade.sample(
            request(), CascadeState.from_bytes(checkpoint.to_bytes()), overlap_levels=overlap
        )
        assert same_codes(resumed, in_turn)


def test_levels_resumed_mid_overlap_build_their_decoders_in_turn(
    in_turn: CascadeState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume with both levels part-way starts both at once, and each builds its decoder's calls
    (on CUDA: compiles and captures graphs, which another thread's capture would break). The first
    build waits for a second to come in beside it; none may."""
    make_call = WindowDecoder._make_call
    guard, second = threading.Lock(), threading.Event()
    inside: list[str] = []
    overlaps: list[list[str]] = []
    builds: list[str] = []

    def traced(self: WindowDecoder, *args: Any) -> Any:
        me = threading.current_thread().name
        with guard:
            inside.append(me)
            builds.append(me)
            first = len(builds) == 1
            if len(inside) > 1:
                overlaps.append(list(inside))
                second.set()
        try:
            if first:
                second.wait(timeout=5)  # time enough for the other level to reach its build
            return make_call(self, *args)
        finally:
            with guard:
                inside.remove(me)

    monkeypatch.setattr(WindowDecoder, "_make_call", traced)
    priors = [tiny_prior("up0", seed=1), tiny_prior("up1", seed=2), tiny_prior("top_5b", seed=3)]
    cascade = Cascade(make_tiny_vqvae(), priors, decode=DecodeOptions(path="static", tokens_per_call=7))
    state = CascadeState(
        [in_turn.codes[0][:, :64], in_turn.codes[1][:, :64], in_turn.codes[2]],
        level_base={1: 0, 0: 0},
        windows_done={1: 1, 0: 1},
    )
    resumed = cascade.sample(upsample_request(in_turn), state, overlap_levels=True)
    assert overlaps == []
    assert set(builds) == {"sampling level 1", "sampling level 0"}
    assert same_codes(resumed, in_turn)


def test_a_cancel_during_overlap_stops_every_level_and_resumes(
    cascade: Cascade, held: HeldCascade, in_turn: CascadeState
) -> None:
    both_begun, stopped = threading.Event(), threading.Event()
    release = hold_level_one(3, held)
    after_stop: list[str] = []  # callbacks run once should_stop said yes

    def on_window(state: CascadeState) -> None:
        if stopped.is_set():
            after_stop.append("on_window")
        release(state)
        if state.windows_done.get(0, 0) >= 1:
            both_begun.set()

    def on_progress(progress: Progress) -> None:
        if stopped.is_set():
            after_stop.append("on_progress")

    def should_stop() -> bool:
        if stopped.is_set():
            after_stop.append("should_stop")
        if both_begun.is_set():
            stopped.set()
        return stopped.is_set()

    with pytest.raises(SamplingCancelled) as info:
        held.sample(
            upsample_request(in_turn),
            on_window=on_window,
            on_progress=on_progress,
            should_stop=should_stop,
            overlap_levels=True,
            progress_every=8,
        )
    assert stopped.is_set() and after_stop == []
    assert not sampling_threads()
    state = info.value.state
    assert 1 <= state.windows_done[1] < 4 and 1 <= state.windows_done[0] < 8  # both part-way
    resumed = cascade.sample(
        upsample_request(in_turn), CascadeState.from_bytes(state.to_bytes()), overlap_levels=True
    )
    assert same_codes(resumed, in_turn)


@pytest.mark.parametrize("failing", [(1, 2), (0, 1)])
def test_an_error_in_one_level_stops_the_other_and_surfaces(
    held: HeldCascade, in_turn: CascadeState, failing: tuple[int, int]
) -> None:
    held.fail_at = failing
    windows: list[dict[int, int]] = []
    with pytest.raises(RuntimeError, match=f"broken at level {failing[0]} window {failing[1]}"):
        held.sample(
            upsample_request(in_turn),
            on_window=lambda s: windows.append(dict(s.windows_done)),
            overlap_levels=True,
        )
    assert not sampling_threads()
    assert windows and windows[-1] != {1: 4, 0: 8}


class HeldPriors(PriorSource):
    """The cascade's priors, noting which levels are held (acquired, not yet released)."""

    def __init__(self, base: PriorSource) -> None:
        super().__init__([base.acquire(level) for level in range(3)])
        self.held: set[int] = set()
        self.together: set[int] = set()  # the most levels held at once
        self.acquired: list[int] = []
        self.lock = threading.Lock()

    def acquire(self, level: int) -> JukeboxPrior:
        with self.lock:
            self.held.add(level)
            self.acquired.append(level)
            self.together = max(self.together, set(self.held), key=len)
        return super().acquire(level)

    def release(self, level: int) -> None:
        with self.lock:
            self.held.remove(level)


def test_overlapping_levels_hold_their_priors_together_and_release_each(
    cascade: Cascade, in_turn: CascadeState
) -> None:
    priors = HeldPriors(cascade.priors)
    held = HeldCascade(cascade, priors)
    release = hold_level_one(1, held, until_level_zero=1)
    held.sample(upsample_request(in_turn), on_window=release, overlap_levels=True)
    assert priors.together == {0, 1} and sorted(priors.acquired) == [0, 1] and priors.held == set()


class FreeingPriors(PriorSource):
    """Loads a level's prior when acquired and drops it when released, as a worker short of memory
    does (`LazyPriors(keep=False)`), noting whether the prior was gone right then (no gc)."""

    def __init__(self, made: list[Callable[[], JukeboxPrior]]) -> None:
        super().__init__([None, None, None])
        self._made, self._configs = made, [make().config for make in made]
        self.freed: dict[int, bool] = {}

    def config(self, level: int) -> PriorConfig:
        return self._configs[level]

    def acquire(self, level: int) -> JukeboxPrior:
        if self._priors[level] is None:
            self._priors[level] = self._made[level]()
        return super().acquire(level)

    def release(self, level: int) -> None:
        gone = weakref.ref(super().acquire(level))
        self._priors[level] = None
        self.freed[level] = gone() is None  # what empty_cache could give back now


@pytest.mark.parametrize("overlap", [False, True])
def test_a_released_prior_is_held_by_nothing_of_the_sampling(in_turn: CascadeState, overlap: bool) -> None:
    made = [
        lambda: tiny_prior("up0", seed=1),
        lambda: tiny_prior("up1", seed=2),
        lambda: tiny_prior("top_5b", seed=3),
    ]
    source = FreeingPriors(made)
    cascade = Cascade(make_tiny_vqvae(), source, decode=DecodeOptions(path="static", tokens_per_call=7))
    gc.collect()
    gc.disable()
    try:
        sampled = cascade.sample(request(), overlap_levels=overlap)
    finally:
        gc.enable()
    assert source.freed == {2: True, 1: True, 0: True}
    assert same_codes(sampled, in_turn)


def test_levels_overlap_by_default_on_cuda_only() -> None:
    assert overlap_by_default(torch.device("cuda"))
    assert not overlap_by_default(torch.device("cpu"))
