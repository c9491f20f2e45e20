"""The factored-attention transformer: layer patterns, masks, KV-cache paths, dtype policy."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sampler.jukebox.transformer import (
    BLOCK,
    CROSS,
    DENSE,
    PREV_BLOCK,
    PRIME,
    TRANSPOSE,
    Conv1D,
    FactoredAttention,
    KVCacheError,
    LayerNorm,
    Transformer,
    TransformerConfig,
    TransformerConfigError,
    attn_func_for_layer,
)
from tests.sampler.jukebox.attention_oracle import step

SEQ, BLOCKS, BLOCK_CTX = 48, 6, 8  # 6 blocks of 8 positions
PRIME_LEN, ENC_LEN = 13, 5
ALL_FUNCS = (DENSE, BLOCK, TRANSPOSE, PREV_BLOCK, CROSS, PRIME)


def _config(**kw: object) -> TransformerConfig:
    base: dict[str, object] = dict(
        width=16,
        depth=1,
        heads=2,
        seq_len=SEQ,
        attn_order=0,
        blocks=BLOCKS,
        encoder_len=ENC_LEN,
        prime_len=PRIME_LEN,
    )
    base.update(kw)
    return TransformerConfig(**base)  # type: ignore[arg-type]


def _layer(attn_func: int, seed: int = 0) -> FactoredAttention:
    torch.manual_seed(seed)
    layer = FactoredAttention(_config(), attn_func)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(std=0.3)
    return layer


def test_layer_patterns_of_the_published_orders() -> None:
    assert [attn_func_for_layer(2, d) for d in range(6)] == [1, 2, 3, 1, 2, 3]
    order10 = [attn_func_for_layer(10, d) for d in range(79)]
    assert [d for d, f in enumerate(order10) if f == CROSS] == [18, 28, 38, 48, 58, 68, 78]
    assert set(order10) == {BLOCK, TRANSPOSE, PREV_BLOCK, CROSS}
    order12 = [attn_func_for_layer(12, d) for d in range(72)]
    assert [d for d, f in enumerate(order12) if f == PRIME] == [15, 31, 63]
    assert [d for d, f in enumerate(order12) if f == DENSE] == [47]
    assert all(attn_func_for_layer(0, d) == DENSE for d in range(5))
    with pytest.raises(TransformerConfigError, match="attn_order 5"):
        attn_func_for_layer(5, 0)


def test_config_errors_name_the_problem() -> None:
    with pytest.raises(TransformerConfigError, match="divisible by heads"):
        _config(heads=3)
    with pytest.raises(TransformerConfigError, match="blocks"):
        _config(attn_order=2, blocks=7)
    with pytest.raises(TransformerConfigError, match="encoder_len"):
        _config(attn_order=10, depth=19, encoder_len=0)
    with pytest.raises(TransformerConfigError, match="prime_len"):
        _config(attn_order=12, depth=16, prime_len=None)


def test_published_widths() -> None:
    one_b = TransformerConfig(
        width=2048, depth=72, heads=2, seq_len=6528, attn_order=12, blocks=64, prime_len=384
    )
    assert (one_b.n_state, one_b.head_dim, one_b.block_ctx, one_b.prime_window) == (512, 256, 102, 448)
    five_b = TransformerConfig(width=4800, depth=72, heads=8, seq_len=8192, attn_order=2, blocks=128)
    assert (five_b.n_state, five_b.head_dim, five_b.block_ctx) == (1200, 150, 64)


def _expected_sources(attn_func: int, pos: int) -> set[int]:
    """Positions whose input may influence output `pos` (spec §3.2)."""
    b = BLOCK_CTX
    block_start = pos - pos % b
    if attn_func == DENSE:
        return set(range(pos + 1))
    if attn_func == BLOCK:
        return set(range(block_start, pos + 1))
    if attn_func == TRANSPOSE:
        return set(range(pos % b, pos + 1, b))
    if attn_func == PREV_BLOCK:  # block 0 attends to zeros: its output is a constant
        if block_start == 0:
            return set()
        return set(range(max(0, block_start - b), block_start)) | {pos}
    if attn_func == PRIME:
        window = (PRIME_LEN // BLOCKS + 1) * BLOCKS
        return set(range(min(pos + 1, window))) | {pos}
    return {pos}  # cross: only its own query from the stream


@pytest.mark.parametrize("attn_func", ALL_FUNCS)
def test_each_attention_function_reads_exactly_its_positions(attn_func: int) -> None:
    layer = _layer(attn_func).double()
    x = torch.randn(1, SEQ, 16, dtype=torch.float64, requires_grad=True)
    enc = torch.randn(1, ENC_LEN, 16, dtype=torch.float64)
    out = layer(x, enc)
    for pos in (0, 5, 8, 13, 17, 26, 47):
        (grad,) = torch.autograd.grad(out[0, pos].sum(), x, retain_graph=True)
        sources = set(torch.nonzero(grad[0].abs().sum(-1) > 0).view(-1).tolist())
        assert sources == _expected_sources(attn_func, pos), (attn_func, pos)


def test_previous_block_of_block_zero_outputs_the_projection_bias() -> None:
    layer = _layer(PREV_BLOCK)
    out = layer(torch.randn(2, SEQ, 16))
    assert torch.equal(out[:, :BLOCK_CTX], layer.c_proj.b.expand(2, BLOCK_CTX, 16))
    assert not torch.allclose(out[:, BLOCK_CTX:], layer.c_proj.b.expand(2, SEQ - BLOCK_CTX, 16))


def _run_chunks(
    layer: FactoredAttention, x: torch.Tensor, enc: torch.Tensor, chunks: list[int]
) -> torch.Tensor:
    """Run x through the layer's cache path in the given chunk sizes (the first chunk is a full prefill)."""
    transformer_like = _single_layer_cache(layer, x.shape[0], enc)
    outs, pos = [], 0
    for size in chunks:
        part = x[:, pos : pos + size]
        if pos == 0:
            outs.append(layer(part, enc, transformer_like))
        elif size == 1:
            outs.append(step(layer, part, transformer_like, pos))
        else:
            outs.append(layer.chunk(part, transformer_like, pos))
        pos += size
    return torch.cat(outs, dim=1)


def _single_layer_cache(layer: FactoredAttention, batch: int, enc: torch.Tensor):  # type: ignore[no-untyped-def]
    from sampler.jukebox.transformer import LayerKV

    if layer.attn_func == CROSS:
        k, v = layer.encoder_kv(enc)
        return LayerKV(k, v)
    return layer.new_cache(batch, SEQ, torch.float32, torch.device("cpu"))


@pytest.mark.parametrize("attn_func", ALL_FUNCS)
@pytest.mark.parametrize("fast", [False, True])
def test_cache_paths_match_the_full_pass(attn_func: int, fast: bool) -> None:
    layer = _layer(attn_func)
    layer.fast = fast
    x, enc = torch.randn(2, SEQ, 16), torch.randn(2, ENC_LEN, 16)
    with torch.no_grad():
        full = layer(x, enc)
        one_by_one = _run_chunks(layer, x, enc, [1] * SEQ)
        chunked = _run_chunks(layer, x, enc, [5, 3, 1, 9, 2, 17, 1, 1, 9])
        prefill_then_steps = _run_chunks(layer, x, enc, [21] + [1] * (SEQ - 21))
    for got in (one_by_one, chunked, prefill_then_steps):
        torch.testing.assert_close(got, full, atol=2e-6, rtol=1e-5)


@settings(max_examples=15, deadline=None)
@given(
    attn_func=st.sampled_from((BLOCK, TRANSPOSE, PREV_BLOCK, PRIME, DENSE)),
    cuts=st.lists(st.integers(1, SEQ - 1), min_size=1, max_size=6, unique=True),
)
def test_any_chunking_matches_the_full_pass(attn_func: int, cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), SEQ]
    chunks = [b - a for a, b in itertools.pairwise(bounds)]
    layer = _layer(attn_func, seed=3)
    x, enc = torch.randn(1, SEQ, 16), torch.randn(1, ENC_LEN, 16)
    with torch.no_grad():
        torch.testing.assert_close(_run_chunks(layer, x, enc, chunks), layer(x, enc), atol=2e-6, rtol=1e-5)


def test_reference_arithmetic_and_sdpa_agree() -> None:
    config = _config(attn_order=12, depth=16)
    torch.manual_seed(1)
    model = Transformer(config)
    x = torch.randn(2, SEQ, 16)
    with torch.no_grad():
        exact = model(x)
        model.set_fast_attention(True)
        fast = model(x)
    torch.testing.assert_close(fast, exact, atol=1e-5, rtol=1e-5)


def test_full_transformer_cache_with_every_function() -> None:
    """A stack with block, transpose, prev-block, prime and dense layers: steps == full forward."""
    config = _config(attn_order=12, depth=48, width=8, heads=1)
    torch.manual_seed(2)
    model = Transformer(config)
    x = torch.randn(2, SEQ, 8)
    with torch.no_grad():
        full = model(x)
        cache = model.new_cache(2)
        parts = [model(x[:, :10], cache=cache), model(x[:, 10:21], cache=cache)]
        parts += [model(x[:, i : i + 1], cache=cache) for i in range(21, SEQ)]
    assert cache.pos == SEQ
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_cache_misuse_is_refused() -> None:
    model = Transformer(_config(attn_order=2, depth=3))
    cache = model.new_cache(1, max_len=10)
    with torch.no_grad():
        model(torch.randn(1, 10, 16), cache=cache)
        with pytest.raises(KVCacheError, match="holds 10 positions"):
            model(torch.randn(1, 1, 16), cache=cache)
        with pytest.raises(KVCacheError, match="batch of 2"):
            model(torch.randn(2, 1, 16), cache=model.new_cache(1))
        with pytest.raises(KVCacheError, match="another transformer"):
            Transformer(_config(attn_order=2, depth=3))(torch.randn(1, 1, 16), cache=model.new_cache(1))
    with pytest.raises(KVCacheError, match="max_len"):
        model.new_cache(1, max_len=SEQ + 1)
    cross = Transformer(_config(attn_order=10, depth=19))
    with pytest.raises(KVCacheError, match="lyric encoder"):
        cross.new_cache(1)


def test_conv1d_weight_is_in_by_out() -> None:
    conv = Conv1D(3, 5)
    x = torch.randn(2, 4, 3)
    assert conv.w.shape == (3, 5)
    torch.testing.assert_close(conv(x), x @ conv.w + conv.b)


def test_layernorm_runs_in_fp32_and_returns_the_input_dtype() -> None:
    norm = LayerNorm(64)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = (torch.randn(3, 64) * 300).to(torch.bfloat16)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    expected = torch.nn.functional.layer_norm(x.float(), (64,), norm.weight, norm.bias, 1e-5).to(
        torch.bfloat16
    )
    assert torch.equal(out, expected)


def test_compute_dtype_is_chosen_once() -> None:
    torch.manual_seed(4)
    model = Transformer(_config(attn_order=2, depth=3))
    x = torch.randn(2, SEQ, 16)
    with torch.no_grad():
        reference = model(x)
        model.to_compute_dtype(torch.bfloat16)
        assert model.dtype == torch.bfloat16
        assert all(m.weight.dtype == torch.float32 for m in model.modules() if isinstance(m, LayerNorm))
        out = model(x)
        cache = model.new_cache(2)
        assert cache.layers[0].k.dtype == torch.bfloat16
        stepped = torch.cat(
            [model(x[:, :20], cache=cache)] + [model(x[:, i : i + 1], cache=cache) for i in range(20, SEQ)], 1
        )
    assert out.dtype == torch.float32 and stepped.dtype == torch.float32
    scale = reference.abs().max().item()
    assert (out - reference).abs().max().item() < 0.05 * scale
    assert (stepped - out).abs().max().item() < 0.05 * scale


def test_scale_is_applied_after_the_product() -> None:
    """The reference path computes q·kᵀ first and scales in place: softmax(q·kᵀ·(1/sqrt(d)))."""
    from sampler.jukebox.transformer import _attend

    q, k, v = torch.randn(1, 1, 4, 9), torch.randn(1, 1, 4, 9), torch.randn(1, 1, 4, 9)
    expected = torch.softmax((q @ k.transpose(-1, -2)) * (1 / math.sqrt(math.sqrt(9))) ** 2, -1) @ v
    torch.testing.assert_close(_attend(q, k, v, None, fast=False), expected)
