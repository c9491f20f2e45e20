"""The sampling fast paths: single-token decode, the cheap exact draw and the inverse-CDF draw.

Each fast path is checked against the slower path it replaces: `Transformer.decode` against the
layer-by-layer `step` path and the full forward pass, `draw` against
`torch.distributions.Categorical` (same generator stream, same ids), `draw_fast` against the
softmax distribution.
"""

from __future__ import annotations

import pytest
import torch

from sampler.jukebox.cascade import draw, draw_fast, filter_logits, sample_steps
from sampler.jukebox.prior import Conditioning, JukeboxPrior, PriorConfig, PriorInputError
from sampler.jukebox.transformer import (
    BLOCK,
    CROSS,
    DENSE,
    PREV_BLOCK,
    PRIME,
    TRANSPOSE,
    FactoredAttention,
    LayerKV,
    Transformer,
    TransformerConfig,
)
from tests.sampler.jukebox.attention_oracle import step

SEQ, BLOCKS = 48, 6
CONFIG = dict(width=16, depth=1, seq_len=SEQ, attn_order=0, blocks=BLOCKS, encoder_len=5, prime_len=13)


def _layer(attn_func: int, heads: int) -> FactoredAttention:
    torch.manual_seed(attn_func)
    layer = FactoredAttention(TransformerConfig(heads=heads, **CONFIG), attn_func)  # type: ignore[arg-type]
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(std=0.3)
    return layer


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("attn_func", [DENSE, BLOCK, TRANSPOSE, PREV_BLOCK, CROSS, PRIME])
def test_decode_gives_the_bits_of_the_step_path(attn_func: int, heads: int, dtype: torch.dtype) -> None:
    layer = _layer(attn_func, heads).to(dtype)
    x, enc = torch.randn(3, SEQ, 16, dtype=dtype), torch.randn(3, 5, 16, dtype=dtype)

    def cache() -> LayerKV:
        if attn_func == CROSS:
            return LayerKV(*layer.encoder_kv(enc))
        return layer.new_cache(3, SEQ, dtype, torch.device("cpu"))

    stepped, decoded = cache(), cache()
    with torch.no_grad():
        full = layer(x, enc)
        for pos in range(SEQ):
            want = step(layer, x[:, pos : pos + 1], stepped, pos)[:, 0]
            got = layer.decode(x[:, pos], decoded, pos)
            assert torch.equal(got, want), f"position {pos}"
            if dtype == torch.float32:
                torch.testing.assert_close(got, full[:, pos], atol=2e-6, rtol=1e-5)
    assert torch.equal(decoded.k, stepped.k) and torch.equal(decoded.v, stepped.v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_block_decode_gives_the_bits_of_the_module_path(dtype: torch.dtype) -> None:
    """`ResidualBlock.decode` (weights read once per window, scalars as 0-dim tensors) against
    `ln_0` → `attn.step` → `forward` with the modules' own calls."""
    torch.manual_seed(3)
    model = Transformer(TransformerConfig(heads=2, **{**CONFIG, "attn_order": 12, "depth": 4}))  # type: ignore[arg-type]
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.3)
        model.to_compute_dtype(dtype)
        x = torch.randn(2, SEQ, 16).to(dtype)
        for block in model._blocks:
            attn = block.attn
            stepped = attn.new_cache(2, SEQ, dtype, torch.device("cpu"))
            decoded = attn.new_cache(2, SEQ, dtype, torch.device("cpu"))
            for pos in range(SEQ):
                h = x[:, pos : pos + 1]
                want = block(h, step(attn, block.ln_0(h), stepped, pos))[:, 0]
                got = block.decode(x[:, pos].clone(), decoded, pos)
                assert torch.equal(got, want), f"attention {attn.attn_func}, position {pos}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_transformer_decode_with_sdpa_matches_the_full_pass(dtype: torch.dtype) -> None:
    config = TransformerConfig(heads=2, **{**CONFIG, "attn_order": 12, "depth": 16})  # type: ignore[arg-type]
    torch.manual_seed(5)
    model = Transformer(config)
    x = torch.randn(2, SEQ, 16)
    with torch.no_grad():
        full = model(x)
        model.to_compute_dtype(dtype)
        model.set_fast_attention(True)
        cache = model.new_cache(2)
        first = model(x[:, :7], cache=cache)
        steps = [model.decode(x[:, pos], cache) for pos in range(7, SEQ)]
    assert cache.pos == SEQ
    got = torch.cat([first, torch.stack(steps, dim=1)], dim=1)
    tolerance = 1e-5 if dtype == torch.float32 else 0.05 * full.abs().max().item()
    torch.testing.assert_close(got, full, atol=tolerance, rtol=1e-5 if dtype == torch.float32 else 0.05)


@pytest.mark.parametrize("batch", [1, 3])
def test_draw_follows_the_categorical_stream_exactly(batch: int) -> None:
    logits = torch.randn(40, batch, 64) * 3
    logits[::3] = filter_logits(logits[::3], top_k=5)  # -inf entries too
    torch.manual_seed(11)
    expected = [torch.distributions.Categorical(logits=row).sample() for row in logits]
    generator = torch.Generator().manual_seed(11)
    got = [draw(row, generator) for row in logits]
    assert torch.equal(torch.stack(got), torch.stack(expected))
    assert torch.equal(generator.get_state(), torch.default_generator.get_state())


def test_draw_fast_samples_the_softmax_and_never_a_filtered_id() -> None:
    logits = torch.tensor([[2.0, 0.5, -1.0, 1.0, 0.0, -3.0]]).repeat(20000, 1)
    generator = torch.Generator().manual_seed(0)
    ids = draw_fast(logits, generator)
    assert ids.dtype == torch.int64 and ids.shape == (20000,)
    freq = torch.bincount(ids, minlength=6).double() / ids.numel()
    probs = torch.softmax(logits[0].double(), -1)
    assert (freq - probs).abs().max() < 0.015
    filtered = filter_logits(logits[:5000], top_k=2)
    assert set(draw_fast(filtered, generator).tolist()) == {0, 3}
    again = draw_fast(logits[:100], torch.Generator().manual_seed(3))
    assert torch.equal(again, draw_fast(logits[:100], torch.Generator().manual_seed(3)))


def _tiny_prior() -> JukeboxPrior:
    config = PriorConfig(
        level=2,
        n_ctx=32,
        prior_width=16,
        prior_depth=3,
        heads=1,
        attn_order=2,
        blocks=4,
        y_bins=(1, 1),
        min_duration=0.0,
        max_duration=1.0,
        l_bins=64,
    )
    torch.manual_seed(0)
    prior = JukeboxPrior(config).eval()
    with torch.no_grad():
        for p in prior.prior.parameters():
            p.normal_(std=0.3)
    return prior


def _cond(batch: int) -> Conditioning:
    return Conditioning(start=torch.randn(batch, 1, 16), x_cond=torch.randn(batch, 32, 16))


def test_step_without_id_checks_still_refuses_a_wrong_batch() -> None:
    prior = _tiny_prior()
    state = prior.start(_cond(2))
    prior.step(state)
    with pytest.raises(PriorInputError, match="got 3 ids"):
        prior.step(state, torch.zeros(3, dtype=torch.long), check_ids=False)
    with pytest.raises(PriorInputError, match=r"must be in 0\.\.63"):
        prior.step(state, torch.full((2,), 64))


def test_sample_steps_equals_a_hand_written_loop_over_the_teacher_forced_logits() -> None:
    """The loop's ids, fed back through `prior.logits`, give the logits each draw came from."""
    prior = _tiny_prior()
    cond = _cond(2)
    ids = sample_steps(prior, prior.start(cond), 32, 0.9, 0, 0.0, torch.Generator().manual_seed(4))
    generator = torch.Generator().manual_seed(4)
    logits = prior.logits(ids, cond) / 0.9
    redrawn = torch.stack([draw(logits[:, t], generator) for t in range(32)], dim=1)
    assert torch.equal(redrawn, ids)
    with pytest.raises(ValueError, match="must be positive"):
        sample_steps(prior, prior.start(cond), 0, 1.0, 0, 0.0, generator)
