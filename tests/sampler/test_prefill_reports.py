"""A window's known tokens go in before it samples: on a CPU, thousands of them take most of an hour in
prefill chunks, during which the sampler said nothing. A cancel waited for the whole prefill, and the
worker's watch for a hung sampler (JUKEBOT_WORKER_STALL_SECONDS) took a healthy 5B job for a hung one.
The prefill now reports "no new token yet" between chunks, where a stop is asked for too."""

from __future__ import annotations

import pytest
import torch

from sampler.jukebox.cascade import Cascade, CascadeState, Progress, SamplingCancelled, SamplingRequest
from tests.sampler.test_model_api_checks import cascade, model_dir, request

__all__ = ["cascade", "model_dir"]  # fixtures

# Tiny geometry (tests/tiny_model_dir.py): top windows of 64 tokens; 2048 samples are 128 top tokens,
# so windows after the first start from known tokens, prefilled in chunks of 8.
CHUNK = 8
WINDOW = 64


def _request(rng: str) -> SamplingRequest:
    return request(sample_length=2048, total_length=2048, seed=3, rng=rng, chunk_size=(CHUNK, CHUNK, CHUNK))


@pytest.mark.parametrize("rng", ["window", "reference"])  # the static decoder, and the sliced path
def test_the_prefill_reports_between_chunks_and_stops_there(cascade: Cascade, rng: str) -> None:
    wanted = _request(rng)
    seen: list[Progress] = []
    whole = cascade.sample(wanted, on_progress=seen.append, progress_every=8)
    first = [p for p in seen if p.window == 1]
    assert first, seen
    first_tokens = max(p.tokens_done for p in first)
    in_prefill = [p for p in seen if p.window == 2 and p.tokens_done == first_tokens]
    known = WINDOW - (max(p.tokens_done for p in seen if p.window == 2) - first_tokens)
    assert known > 2 * CHUNK
    assert len(in_prefill) == known // CHUNK - 1, seen  # one between each two chunks (one batch)

    saved: list[CascadeState] = []
    asked: list[Progress] = []

    def stop_in_prefill() -> bool:
        return bool(asked) and asked[-1].window == 2 and asked[-1].tokens_done == first_tokens

    with pytest.raises(SamplingCancelled) as stopped:
        cascade.sample(wanted, on_progress=asked.append, on_window=saved.append, should_stop=stop_in_prefill)
    # Stopped before the second window drew a token, with the first kept: it resumes to the same codes.
    assert stopped.value.state.codes[2].shape[1] == first_tokens == WINDOW
    (after_first,) = saved
    assert torch.equal(stopped.value.state.codes[2], after_first.codes[2])
    resumed = cascade.sample(wanted, stopped.value.state)
    assert torch.equal(resumed.codes[2], whole.codes[2])
