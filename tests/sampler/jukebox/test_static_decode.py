"""The static-shape decode step against today's sliced step (GPU-PLAN.md §4 step 3).

The static step reads a fixed key range per attention kind under a mask, with the position as a
device tensor: same keys, so the same logits bit for bit where the masked softmax rows are short
(8-slot blocks) and the CPU's softmax sums a short row alike whatever masked padding follows it,
within float rounding at 64-slot blocks, the same tokens, and no value read back.
"""

from __future__ import annotations

import pytest
import torch

from sampler.jukebox.cascade import Cascade, SamplingRequest, draw
from sampler.jukebox.prior import JukeboxPrior
from sampler.jukebox.transformer import (
    MASK_VALUE,
    Transformer,
    TransformerConfig,
)
from tests.sampler.jukebox.conftest import make_tiny_vqvae
from tests.sampler.jukebox.dispatch_count import dispatched, read_backs
from tests.sampler.jukebox.tiny_priors import (
    tiny_codes,
    tiny_labels,
    tiny_prior,
    tiny_z_cond,
    wide_tiny_prior,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _transformer(attn_order: int, depth: int, seq_len: int, blocks: int, dtype: torch.dtype) -> Transformer:
    config = TransformerConfig(
        width=16,
        depth=depth,
        heads=2,
        seq_len=seq_len,
        attn_order=attn_order,
        blocks=blocks,
        encoder_len=5,
        prime_len=5,
    )
    torch.manual_seed(attn_order)
    model = Transformer(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.3)
    model.to_compute_dtype(dtype)
    return model


def softmax_ignores_masked_padding(block: int = 8) -> bool:
    """Whether this CPU's `torch.softmax` gives a row of n < `block` values the bits of the same row
    padded with masked values to `block`. Where one vector holds a whole block (AVX-512: 16 floats)
    both rows are summed one by one; on AVX2 (8 floats) a row of 8 is summed as a vector, in another
    order than a row of 3, so the bits may differ in the last place (measured on an AMD EPYC)."""
    generator = torch.Generator().manual_seed(0)
    for n in range(1, block):
        w = torch.randn(64, n, generator=generator)
        padded = torch.cat([w, torch.full((64, block - n), MASK_VALUE)], dim=1)
        if not torch.equal(torch.softmax(w, dim=-1), torch.softmax(padded, dim=-1)[:, :n]):
            return False
    return True


def _assert_same(got: torch.Tensor, want: torch.Tensor, bitwise: bool, message: str) -> None:
    """Bit for bit, or (where the CPU's softmax rounds a padded row otherwise) within float rounding
    of the dtype through up to 19 layers: 1e-5 in fp32 (as at 64-slot blocks), one bf16 step (2⁻⁷) in
    bfloat16."""
    if bitwise:
        assert torch.equal(got, want), message
    else:
        tolerance = 1e-5 if got.dtype == torch.float32 else 2**-7
        torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance, msg=message)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("known", [0, 5])
@pytest.mark.parametrize(
    ("attn_order", "depth", "seq_len", "blocks"),
    [(2, 6, 64, 8), (10, 19, 64, 8), (12, 16, 8, 1)],  # 8-slot blocks; order 12: 8 dense, 6 prime slots
)
def test_static_step_gives_the_bits_of_the_sliced_step(
    attn_order: int, depth: int, seq_len: int, blocks: int, known: int, dtype: torch.dtype
) -> None:
    model = _transformer(attn_order, depth, seq_len, blocks, dtype)
    bitwise = softmax_ignores_masked_padding()
    x, enc = torch.randn(3, seq_len, 16), torch.randn(3, 5, 16)
    with torch.inference_mode():
        sliced, static = model.new_cache(3, encoder_states=enc), model.new_cache(3, encoder_states=enc)
        if known:
            model(x[:, :known], cache=sliced)
            model(x[:, :known], cache=static)
        for pos in range(known, seq_len):
            model.set_static_decode(False)
            want = model.decode(x[:, pos], sliced)
            model.set_static_decode(True)
            got = model.decode(x[:, pos], static)
            _assert_same(got, want, bitwise, f"position {pos}")
    assert static.pos == sliced.pos == seq_len
    for a, b in zip(sliced.layers, static.layers, strict=True):
        _assert_same(b.k, a.k, bitwise, "keys")
        _assert_same(b.v, a.v, bitwise, "values")


def test_the_8_slot_comparison_sees_a_mask_removed(without_transpose_mask: None) -> None:
    """Negative control, on either CPU (bits or float rounding): transpose layers reading their
    whole column are seen."""
    with pytest.raises(AssertionError):
        test_static_step_gives_the_bits_of_the_sliced_step(2, 6, 64, 8, 0, torch.float32)


def _run_side_by_side(prior: JukeboxPrior, kind: str, known: int) -> tuple[float, bool]:
    """Sample a window with the sliced and the static step from the same draws; the static side
    feeds back its own tokens. Returns the largest logit difference and whether all tokens agree."""
    config = prior.config
    labels = tiny_labels(kind, seed=2, total_length=config.sample_length)
    labels[:, 1:3] = torch.tensor([0, config.sample_length])  # the window is the whole song
    z_cond = None
    if config.cond_downsample is not None:
        z_cond = torch.randint(config.l_bins, (2, config.n_ctx // config.cond_downsample))
    cond = prior.get_conditioning(labels, z_cond)
    ids = prior.codes_to_ids(tiny_codes(kind, seed=2, length=prior.n_ctx))[:, :known]
    states = []
    for static in (False, True):
        prior.set_static_decode(static)
        state = prior.start(cond)
        if known:
            prior.prefill(state, ids)
        states.append(state)
    generators = [torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)]
    tokens: list[torch.Tensor | None] = [None, None]
    worst, same = 0.0, True
    with torch.inference_mode():
        for _ in range(prior.n_ctx - known):
            logits = []
            for side, static in enumerate((False, True)):
                prior.set_static_decode(static)
                out = prior.step_in_inference_mode(states[side], tokens[side], check_ids=False)
                logits.append(out)
                tokens[side] = draw(out / 0.99, generators[side])
            worst = max(worst, (logits[0] - logits[1]).abs().max().item())
            same = same and torch.equal(tokens[0], tokens[1])
    prior.set_static_decode(False)
    return worst, same


@pytest.mark.parametrize("kind", ["up0", "top_5b_lyrics", "top_1b_lyrics"])
def test_static_step_at_64_slot_blocks_keeps_tokens_and_logits(kind: str) -> None:
    prior = wide_tiny_prior(kind)
    worst, same = _run_side_by_side(prior, kind, known=100)
    assert same
    assert worst <= 1e-5


def test_a_static_step_without_the_transpose_mask_parts_from_the_sliced_step(
    without_transpose_mask: None,
) -> None:
    """Negative control: the comparison above sees a mask removed."""
    worst, same = _run_side_by_side(wide_tiny_prior("up0"), "up0", known=100)
    assert worst > 1e-2 and not same


@pytest.mark.parametrize("kind", ["up0", "top_5b_lyrics", "top_1b_lyrics"])
def test_a_static_step_reads_nothing_back(kind: str) -> None:
    prior = tiny_prior(kind, seed=1)
    prior.set_static_decode(True)
    state = prior.start(prior.get_conditioning(tiny_labels(kind), tiny_z_cond(kind)))
    with torch.inference_mode():
        token = prior.step_in_inference_mode(state).argmax(-1)
        for _ in range(20):  # across a block boundary (blocks of 8)
            with dispatched() as ops:
                token = prior.step_in_inference_mode(state, token, check_ids=False).argmax(-1)
            assert ops["aten.addmm"] > 0  # the counter sees the step
            assert not read_backs(ops), ops
        # the same counter sees the read-back of the range check
        with dispatched() as ops:
            prior.step_in_inference_mode(state, token, check_ids=True)
        assert read_backs(ops)


def test_a_multi_window_cascade_with_the_static_step_gives_the_same_codes() -> None:
    priors = [tiny_prior("up0", seed=1), tiny_prior("up1", seed=2), tiny_prior("top_1b_lyrics", seed=3)]
    cascade = Cascade(make_tiny_vqvae(), priors)
    request = SamplingRequest(
        mode="ancestral",
        sample_length=2048,  # 2 top windows, 4 at level 1, 8 at level 0
        total_length=4000,
        n_samples=2,
        artist="the beatles",
        genre="rock",
        lyrics="la la la",
        hop_fraction=(1.0, 1.0, 0.5),
        max_batch_size=(1, 2, 2),
        chunk_size=(8, 8, 8),
        seed=1234,
        rng="reference",
    )
    sliced = cascade.sample(request)
    for prior in priors:
        prior.set_static_decode(True)
    static = cascade.sample(request)
    assert all(torch.equal(a, b) for a, b in zip(sliced.codes, static.codes, strict=True))
