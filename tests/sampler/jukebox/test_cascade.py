"""The sampling cascade on tiny random-weight models: modes, resume, cancel, impossible requests."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sampler.jukebox.cascade import (
    Cascade,
    CascadeState,
    Progress,
    SamplingCancelled,
    SamplingError,
    SamplingRequest,
    filter_logits,
)
from sampler.jukebox.prior import JukeboxPrior
from tests.sampler.jukebox.conftest import make_tiny_vqvae, tiny_audio
from tests.sampler.jukebox.tiny_priors import tiny_config, tiny_prior

pytestmark = pytest.mark.usefixtures("single_thread")

SR = 44100
LENGTH = 2048  # samples: 2 top windows of 1024 (hop 16), 4 of level 1, 8 of level 0


def make_cascade(top: str = "top_5b") -> Cascade:
    priors = [tiny_prior("up0", seed=1), tiny_prior("up1", seed=2), tiny_prior(top, seed=3)]
    return Cascade(make_tiny_vqvae(), priors)


@pytest.fixture(scope="module")
def cascade() -> Cascade:
    torch.set_num_threads(1)
    return make_cascade()


def request(**changes: object) -> SamplingRequest:
    base = SamplingRequest(
        mode="ancestral",
        sample_length=LENGTH,
        total_length=4000,
        n_samples=2,
        artist="the beatles",
        genre="rock",
        hop_fraction=(1.0, 1.0, 0.5),
        max_batch_size=(1, 2, 2),
        chunk_size=(8, 8, 8),
        seed=1234,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_ancestral_samples_every_level_to_the_full_length(cascade: Cascade) -> None:
    seen: list[Progress] = []
    state = cascade.sample(request(), on_progress=seen.append)
    assert [tuple(c.shape) for c in state.codes] == [(2, LENGTH // 4), (2, LENGTH // 8), (2, LENGTH // 16)]
    assert all(int(c.min()) >= 0 and int(c.max()) < 64 for c in state.codes)
    assert seen[0].level == 2 and seen[-1].level == 0
    assert seen[-1].tokens_done == seen[-1].tokens_total
    audio = cascade.decode(state.codes[0], 0)
    assert audio.shape == (2, LENGTH) and audio.abs().max() <= 1.0
    # Same seed, same codes; another seed, other codes.
    again = cascade.sample(request())
    assert all(torch.equal(a, b) for a, b in zip(state.codes, again.codes, strict=True))
    other = cascade.sample(request(seed=99))
    assert not torch.equal(state.codes[2], other.codes[2])


@pytest.mark.parametrize("rng", ["window", "reference"])
def test_resuming_from_any_window_equals_an_unbroken_run(cascade: Cascade, rng: str) -> None:
    req = request(rng=rng)
    saved: list[bytes] = []
    unbroken = cascade.sample(req, on_window=lambda s: saved.append(s.to_bytes()))
    assert len(saved) == 3 + 4 + 8  # windows at levels 2, 1, 0
    for blob in saved[1::3]:
        resumed = cascade.sample(req, CascadeState.from_bytes(blob))
        assert all(torch.equal(a, b) for a, b in zip(unbroken.codes, resumed.codes, strict=True))


def test_a_job_resumed_with_other_batch_sizes_equals_an_unbroken_run(cascade: Cascade) -> None:
    """A worker killed mid-job, the job taken up by a worker with another JUKEBOT_MAX_BATCH_SIZE."""
    saved: list[bytes] = []
    unbroken = cascade.sample(request(), on_window=lambda s: saved.append(s.to_bytes()))
    for blob in saved[1::4]:
        resumed = cascade.sample(request(max_batch_size=(2, 1, 1)), CascadeState.from_bytes(blob))
        assert all(torch.equal(a, b) for a, b in zip(unbroken.codes, resumed.codes, strict=True))


def test_a_reference_state_refuses_other_batch_sizes(cascade: Cascade) -> None:
    """rng="reference" draws as jukebox-infer does, per batch: resumed with other batch sizes, its codes
    were neither run's, without a word."""
    saved: list[bytes] = []
    cascade.sample(request(rng="reference"), on_window=lambda s: saved.append(s.to_bytes()))
    other = request(rng="reference", max_batch_size=(2, 1, 1))
    with pytest.raises(SamplingError, match=r"other max_batch_size"):
        cascade.sample(other, CascadeState.from_bytes(saved[1]))


def test_a_short_primed_song_sampled_as_the_reference_resumes_from_its_own_states(cascade: Cascade) -> None:
    """The reference's partial window samples the song's length after the prompt, so the song comes
    out longer than asked (kept for parity); its states were refused as "longer than the song"."""
    req = request(rng="reference", mode="primed", prompt=tiny_audio(batch=2, samples=256), sample_length=512)
    saved: list[bytes] = []
    unbroken = cascade.sample(req, on_window=lambda s: saved.append(s.to_bytes()))
    assert unbroken.codes[2].shape[1] > 512 // 16  # longer than asked
    assert saved
    for blob in saved:
        resumed = cascade.sample(req, CascadeState.from_bytes(blob))
        assert all(torch.equal(a, b) for a, b in zip(unbroken.codes, resumed.codes, strict=True))


def test_a_state_resumes_with_the_same_names_written_otherwise(cascade: Cascade) -> None:
    """Names are forgiven their case, accents and spacing when sampled; a state saved for 'The Beatles'
    was refused to 'the beatles', which samples the same codes."""
    saved: list[bytes] = []
    unbroken = cascade.sample(
        request(artist="The Beatles", genre="Rock"), on_window=lambda s: saved.append(s.to_bytes())
    )
    resumed = cascade.sample(request(), CascadeState.from_bytes(saved[1]))
    assert all(torch.equal(a, b) for a, b in zip(unbroken.codes, resumed.codes, strict=True))
    with pytest.raises(SamplingError, match=r"other styles\)"):
        cascade.sample(request(artist="queen"), CascadeState.from_bytes(saved[1]))


def test_cancel_stops_inside_a_window_and_keeps_finished_windows(cascade: Cascade) -> None:
    calls = 0

    def stop_after_a_while() -> bool:
        nonlocal calls
        calls += 1
        return calls > 11  # 8 reports in the first top window, 4 in the second

    windows: list[CascadeState] = []
    with pytest.raises(SamplingCancelled) as info:
        cascade.sample(request(), on_window=windows.append, should_stop=stop_after_a_while, progress_every=8)
    state = info.value.state
    assert state.windows_done == {2: 1}  # the second top window was interrupted
    assert state.codes[2].shape[1] == 64 and state.codes[1].shape[1] == 0
    finished = cascade.sample(request(), CascadeState.from_bytes(state.to_bytes()))
    assert torch.equal(finished.codes[0], cascade.sample(request()).codes[0])


def test_preview_then_upsample_equals_sampling_all_levels(cascade: Cascade) -> None:
    full = cascade.sample(request())
    preview = cascade.sample(request(levels=(2,)))
    assert preview.codes[1].shape[1] == 0 and torch.equal(preview.codes[2], full.codes[2])
    upsampled = cascade.sample(request(mode="upsample", levels=(0, 1), codes=(None, None, preview.codes[2])))
    assert all(torch.equal(a, b) for a, b in zip(full.codes, upsampled.codes, strict=True))


def test_continue_extends_earlier_codes(cascade: Cascade) -> None:
    first = cascade.sample(request(levels=(2,)))
    longer = cascade.sample(
        request(mode="continue", levels=(2,), sample_length=LENGTH + 512, codes=(None, None, first.codes[2]))
    )
    assert longer.codes[2].shape[1] == (LENGTH + 512) // 16
    assert torch.equal(longer.codes[2][:, : first.codes[2].shape[1]], first.codes[2])


def test_primed_continues_the_prompt_codes(cascade: Cascade) -> None:
    prompt = tiny_audio(batch=2, samples=512)
    seen: list[Progress] = []
    state = cascade.sample(request(mode="primed", prompt=prompt), on_progress=seen.append)
    # Windows whose tokens the prompt fills are not sampled, nor counted: 1..count per level.
    for level in range(3):
        at_level = [p for p in seen if p.level == level]
        (count,) = {p.window_count for p in at_level}
        assert sorted({p.window for p in at_level}) == list(range(1, count + 1))
    prompt_codes = cascade.vqvae.encode(prompt)
    for level in range(3):
        assert torch.equal(state.codes[level][:, : prompt_codes[level].shape[1]], prompt_codes[level])
        assert state.codes[level].shape[1] == LENGTH // cascade.hops[level]


def test_lyrics_models_sample_with_lyrics() -> None:
    for top in ("top_5b_lyrics", "top_1b_lyrics"):
        cascade = make_cascade(top)
        state = cascade.sample(request(levels=(2,), lyrics="Hello darkness, my old friend"))
        assert state.codes[2].shape == (2, LENGTH // 16)
        assert int(state.codes[2].min()) >= 0 and int(state.codes[2].max()) < 64


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(sample_length=1000), "sample_length must be a positive multiple of 16 samples"),
        (dict(total_length=1024), "total_length (1024) must be at least sample_length (2048)"),
        (dict(lyrics="la la la"), "this model has no lyrics conditioning"),
        (
            dict(mode="upsample", levels=(0, 1, 2), codes=(None, None, None)),
            "upsample samples the lower levels",
        ),
        (dict(mode="upsample", levels=(0, 1)), "upsample mode needs codes"),
        (
            dict(mode="upsample", levels=(0, 1), codes=(None, None, torch.zeros(2, 64, dtype=torch.long))),
            "level 1 is conditioned on level 2, whose codes cover",
        ),
        (dict(levels=(0, 1), sample_length=256), "upsampling level 1 needs at least one full window"),
        (
            dict(mode="upsample", levels=(0, 1), codes=(None, None, torch.full((2, 128), 64))),
            "the codes of level 2 must be in 0..63",
        ),
        (dict(chunk_size=(8, -1, 8)), "chunk_size must be at least 1, or 0 for one pass"),
        (dict(mode="primed"), "primed mode needs prompt audio"),
        (dict(mode="primed", prompt=torch.zeros(2, 4096)), "must be shorter than the sample"),
        (dict(top_k=5, top_p=0.9), "use top_k or top_p, not both"),
        (dict(mode="sideways"), "unknown mode 'sideways'"),
        (dict(total_length=5000), "this model handles songs shorter than 0.1 s"),
    ],
)
def test_impossible_requests_fail_before_sampling(
    cascade: Cascade, changes: dict[str, object], message: str
) -> None:
    steps: list[Progress] = []
    with pytest.raises(SamplingError) as info:
        cascade.sample(request(**changes), on_progress=steps.append)
    assert message in str(info.value)
    assert steps == []


def test_model_minimum_total_length() -> None:
    top = JukeboxPrior(replace(tiny_config("top_5b"), min_duration=0.09)).eval()  # 3969 samples
    cascade = Cascade(make_tiny_vqvae(), [tiny_prior("up0"), tiny_prior("up1"), top])
    with pytest.raises(SamplingError, match=r"needs a total length of at least 0.09 s \(3969 samples\)"):
        cascade.sample(request(total_length=3000))


def test_filters_keep_what_the_reference_keeps() -> None:
    logits = torch.tensor([[3.0, 1.0, 2.0, 2.0, -1.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, True, False, False, True]]
    # softmax ≈ [.53, .07, .19, .19, .01]: 0.6 keeps the top two sorted (shift keeps the one crossing)
    kept = ~torch.isinf(filter_logits(logits, top_p=0.6))
    assert kept.sum().item() == 2 and kept[0, 0]
