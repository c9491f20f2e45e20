"""One-pass prefill (GPU-PLAN.md §4 step 2): a window's known tokens in one pass sample what the
reference's chunks sample, 1b_lyrics runs its lyric prefix in that same pass, the cascade's prefill
reads nothing back from the device, and one pass is the default on CUDA only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import Tensor

from sampler.jukebox.cascade import (
    ONE_PASS,
    REFERENCE_CHUNK_SIZE,
    Cascade,
    SamplingRequest,
    default_chunk_size,
    prefill_known,
    sample_steps,
)
from sampler.jukebox.prior import Conditioning, JukeboxPrior, SamplingState
from tests.sampler.jukebox.conftest import make_tiny_vqvae, tiny_audio
from tests.sampler.jukebox.dispatch_count import dispatched, read_backs
from tests.sampler.jukebox.tiny_priors import tiny_codes, tiny_labels, tiny_prior, tiny_z_cond

pytestmark = pytest.mark.usefixtures("single_thread")

KINDS = ("up0", "top_5b", "top_5b_lyrics", "top_1b_lyrics")
KNOWN, NEW = 40, 24  # tokens of a 64-token window prefilled, then sampled
# fp32: one pass and chunks differ only in the order of float sums (GPU-PLAN §2 measured ≤ 2.9e-6)
LOGIT_TOLERANCE = 1e-5


def _window(kind: str, seed: int = 5) -> tuple[JukeboxPrior, Conditioning, Tensor]:
    prior = tiny_prior(kind, seed=seed)
    cond = prior.get_conditioning(tiny_labels(kind, seed=3), tiny_z_cond(kind, seed=3))
    ids = prior.codes_to_ids(tiny_codes(kind, seed=3))[:, :KNOWN]
    return prior, cond, ids


def _prefilled(prior: JukeboxPrior, cond: Conditioning, ids: Tensor, chunk_size: int) -> SamplingState:
    state = prior.start(cond)
    prefill_known(prior, state, ids, chunk_size)
    return state


def _first_logits_and_tokens(
    prior: JukeboxPrior, cond: Conditioning, ids: Tensor, chunk_size: int
) -> tuple[Tensor, Tensor]:
    """The logits of the first new token, and NEW tokens drawn as the reference draws them."""
    first = prior.step(_prefilled(prior, cond, ids, chunk_size))
    state = _prefilled(prior, cond, ids, chunk_size)
    tokens = sample_steps(prior, state, NEW, 0.99, 0, 0.0, torch.Generator().manual_seed(7))
    return first, tokens


@pytest.mark.parametrize("kind", KINDS)
def test_one_pass_prefill_samples_as_the_reference_chunks(kind: str) -> None:
    prior, cond, ids = _window(kind)
    one_pass, one_pass_tokens = _first_logits_and_tokens(prior, cond, ids, ONE_PASS)
    for chunk_size in (32, 16, 8):
        chunked, chunked_tokens = _first_logits_and_tokens(prior, cond, ids, chunk_size)
        assert (one_pass - chunked).abs().max().item() <= LOGIT_TOLERANCE, chunk_size
        assert torch.equal(one_pass_tokens, chunked_tokens), chunk_size


def test_a_one_pass_prefill_of_other_tokens_is_seen() -> None:
    """Negative control: the comparison above sees one known token changed."""
    prior, cond, ids = _window("up0")
    changed = ids.clone()
    changed[:, KNOWN // 2] = (changed[:, KNOWN // 2] + 1) % prior.bins
    one_pass, _ = _first_logits_and_tokens(prior, cond, changed, ONE_PASS)
    chunked, _ = _first_logits_and_tokens(prior, cond, ids, 8)
    assert (one_pass - chunked).abs().max().item() > 100 * LOGIT_TOLERANCE


def _passes(prior: JukeboxPrior) -> tuple[list[int], Any]:
    """The length of every transformer pass the prior makes from now on (and the hook's handle)."""
    lengths: list[int] = []
    handle = prior.prior.transformer.register_forward_hook(
        lambda module, args, output: lengths.append(args[0].shape[1])
    )
    return lengths, handle


def test_one_b_lyrics_runs_the_lyric_prefix_and_the_prime_in_one_pass() -> None:
    prior, cond, ids = _window("top_1b_lyrics")
    lengths, handle = _passes(prior)
    merged = prior.start(cond)
    merged_logits = prior.prefill(merged, ids, return_logits=True)
    assert lengths == [prior.prefix_len + KNOWN]  # start, the 16 lyric ids and 39 music ids: one pass
    lengths.clear()
    separate = prior.start(cond)
    prior.feed_queued_prefix(separate)  # what start() did before: the prefix in a pass of its own
    separate_logits = prior.prefill(separate, ids, return_logits=True)
    assert lengths == [prior.prefix_len, KNOWN]
    handle.remove()

    assert merged_logits is not None and separate_logits is not None
    assert merged_logits.shape == separate_logits.shape == (2, KNOWN, prior.bins)  # music rows only
    assert (merged_logits - separate_logits).abs().max().item() <= LOGIT_TOLERANCE
    assert merged.pos == separate.pos == prior.prefix_len + KNOWN
    generators = [torch.Generator().manual_seed(7) for _ in range(2)]
    merged_tokens, separate_tokens = (
        sample_steps(prior, state, NEW, 0.99, 0, 0.0, generator)
        for state, generator in zip((merged, separate), generators, strict=True)
    )
    assert torch.equal(merged_tokens, separate_tokens)

    # negative control: other lyrics in the prefix are seen
    other = replace(cond, prefix_ids=(cond.prefix_ids + 1) % prior.config.n_vocab)  # type: ignore[operator]
    other_logits = prior.prefill(prior.start(other), ids, return_logits=True)
    assert other_logits is not None
    assert (merged_logits - other_logits).abs().max().item() > 100 * LOGIT_TOLERANCE


def test_one_b_lyrics_without_known_tokens_runs_the_prefix_before_the_first_step() -> None:
    prior, cond, _ = _window("top_1b_lyrics")
    lengths, handle = _passes(prior)
    state = prior.start(cond)
    assert lengths == []
    prior.step(state)
    handle.remove()
    assert lengths == [prior.prefix_len]
    assert state.music_pos == 1


def _cascade(top: str) -> Cascade:
    priors = [tiny_prior("up0", seed=1), tiny_prior("up1", seed=2), tiny_prior(top, seed=3)]
    return Cascade(make_tiny_vqvae(), priors)


def _primed_request(chunk_size: tuple[int, int, int] | None) -> SamplingRequest:
    """A primed request whose windows all start with known tokens: the prompt's, or the previous
    window's (hops of half a window below, a quarter at the top)."""
    return SamplingRequest(
        mode="primed",
        sample_length=2048,
        total_length=4000,
        n_samples=2,
        artist="the beatles",
        genre="rock",
        lyrics="Hello darkness, my old friend",
        hop_fraction=(0.5, 0.5, 0.25),
        max_batch_size=(2, 2, 2),
        chunk_size=chunk_size,
        seed=1234,
        prompt=tiny_audio(batch=2, samples=512, seed=3),
    )


@pytest.mark.parametrize("top", ["top_5b_lyrics", "top_1b_lyrics"])
def test_a_cascade_with_one_pass_prefill_samples_the_codes_of_chunked_prefill(top: str) -> None:
    cascade = _cascade(top)
    chunked = cascade.sample(_primed_request((8, 8, 8)))
    one_pass = cascade.sample(_primed_request((ONE_PASS, ONE_PASS, ONE_PASS)))
    assert all(torch.equal(a, b) for a, b in zip(chunked.codes, one_pass.codes, strict=True))


def test_the_cascades_one_pass_prefill_reads_nothing_back(monkeypatch: pytest.MonkeyPatch) -> None:
    cascade = _cascade("top_1b_lyrics")
    request = replace(_primed_request((ONE_PASS, ONE_PASS, ONE_PASS)), sample_length=1024, levels=(1, 2))
    unwatched = JukeboxPrior.prefill
    calls: list[tuple[int, Counter[str]]] = []

    def watched(self: JukeboxPrior, state: SamplingState, ids: Tensor, *args: Any, **kwargs: Any) -> Any:
        with dispatched() as ops:
            result = unwatched(self, state, ids, *args, **kwargs)
        calls.append((ids.shape[1], ops))
        return result

    monkeypatch.setattr(JukeboxPrior, "prefill", watched)
    initial = cascade.initial_state(request)
    known = [
        window.sample_tokens - window.new_tokens
        for level in (2, 1)
        for window in cascade.plan(request, initial, level)
        if window.sample_tokens > window.new_tokens
    ]
    cascade.sample(request)
    assert [length for length, _ in calls] == known  # one call per window, with all its known tokens
    assert all(ops["aten.addmm"] > 0 and not read_backs(ops) for _, ops in calls), calls
    # negative control: the same counter sees the range check's read-backs
    prior, cond, ids = _window("top_1b_lyrics")
    with dispatched() as ops:
        unwatched(prior, prior.start(cond), ids)
    assert read_backs(ops)


def test_one_pass_is_the_default_on_cuda_and_the_reference_chunks_elsewhere() -> None:
    every_level = (ONE_PASS, ONE_PASS, ONE_PASS)
    assert default_chunk_size("cuda", "window") == every_level
    assert default_chunk_size(torch.device("cuda", 1), "window") == every_level
    assert default_chunk_size("cpu", "window") == REFERENCE_CHUNK_SIZE == (32, 32, 16)
    assert default_chunk_size("cuda", "reference") == REFERENCE_CHUNK_SIZE  # parity runs
    # a request that names no chunking gets its cascade's default; one that does keeps its own
    request = _primed_request(None)
    priors = [tiny_prior("up0"), tiny_prior("up1"), tiny_prior("top_5b")]
    for device, expected in (("cpu", REFERENCE_CHUNK_SIZE), ("cuda", every_level)):
        cascade = Cascade(make_tiny_vqvae(), priors, device=device)  # nothing is put on the device
        assert tuple(cascade.chunk_size(request, level) for level in range(3)) == expected
        assert cascade.chunk_size(replace(request, chunk_size=(8, 4, 2)), 1) == 4
