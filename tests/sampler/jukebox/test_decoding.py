"""The persistent window decoder (sampler/jukebox/decoding.py) against today's sliced loop.

On the CPU generator the decoder's uniforms drawn once per window are the sliced loop's stream, and the
static step gives the sliced step's bits at the tiny priors' 8-slot blocks, so the decoder must give
`sample_steps`' tokens exactly: window after window in the same buffers, with any K, filter and
temperature, and a whole cascade must give the same codes on either path.
"""

from __future__ import annotations

import gc
import logging
import types
import weakref
from dataclasses import replace
from typing import Any

import pytest
import torch
from torch import Tensor
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters

from sampler.jukebox import decoding
from sampler.jukebox.cascade import Cascade, SamplingRequest, sample_steps
from sampler.jukebox.decoding import DecodeOptions, WindowDecoder, default_decode_options, window_decoder
from sampler.jukebox.prior import Conditioning, JukeboxPrior
from tests.sampler.jukebox.conftest import make_tiny_vqvae
from tests.sampler.jukebox.dispatch_count import READ_BACKS, dispatched
from tests.sampler.jukebox.test_cascade import request
from tests.sampler.jukebox.tiny_priors import (
    tiny_codes,
    tiny_labels,
    tiny_prior,
    tiny_z_cond,
    wide_tiny_prior,
)

pytestmark = pytest.mark.usefixtures("single_thread")

KINDS = ("up0", "top_5b", "top_5b_lyrics", "top_1b_lyrics")
# (known tokens, temperature, top_k, top_p) of successive windows; K = 5 divides none of 64, 44, 27
WINDOWS = ((0, 0.9, 0, 0.0), (20, 1.0, 5, 0.0), (37, 0.8, 0, 0.8))
BATCH = 2


def _window(prior: JukeboxPrior, kind: str, index: int, known: int) -> tuple[Conditioning, torch.Tensor]:
    """Window `index`'s conditioning and known ids (BATCH, known), different for every window."""
    cond = prior.get_conditioning(tiny_labels(kind, seed=index), tiny_z_cond(kind, seed=index))
    ids = prior.codes_to_ids(tiny_codes(kind, seed=index, length=prior.n_ctx))[:, :known]
    return cond, ids


def _sliced(
    prior: JukeboxPrior,
    cond: Conditioning,
    ids: torch.Tensor,
    seed: int,
    window: tuple[int, float, int, float],
) -> torch.Tensor:
    """Today's window: a new cache, chunked prefill, `sample_steps` with the window draws."""
    known, temperature, top_k, top_p = window
    state = prior.start(cond, prior.n_ctx)
    for first in range(0, known, 8):
        prior.prefill(state, ids[:, first : first + 8])
    generator = torch.Generator().manual_seed(seed)
    return sample_steps(prior, state, prior.n_ctx - known, temperature, top_k, top_p, generator, exact=False)


def _decoded(
    decoder: WindowDecoder,
    cond: Conditioning,
    ids: torch.Tensor,
    seed: int,
    window: tuple[int, float, int, float],
    n_ctx: int,
) -> torch.Tensor:
    known, temperature, top_k, top_p = window
    generator = torch.Generator().manual_seed(seed)
    return decoder.sample_window(cond, ids, n_ctx - known, temperature, top_k, top_p, generator, chunk_size=8)


def _buffers(decoder: WindowDecoder) -> list[int]:
    return [t.data_ptr() for layer in decoder.cache.layers for t in (layer.k_flat, layer.v_flat)]


def _compare(prior: JukeboxPrior, kind: str, options: DecodeOptions) -> list[bool]:
    """Per window of WINDOWS: does the decoder (one for all windows) give the sliced loop's tokens?"""
    decoder = WindowDecoder(prior, BATCH, options)
    buffers = _buffers(decoder)
    same = []
    for index, window in enumerate(WINDOWS):
        cond, ids = _window(prior, kind, index, window[0])
        want = _sliced(prior, cond, ids, index, window)
        got = _decoded(decoder, cond, ids, index, window, prior.n_ctx)
        assert got.shape == want.shape == (BATCH, prior.n_ctx - window[0])
        same.append(torch.equal(got, want))
        assert _buffers(decoder) == buffers  # the same KV buffers, window after window
    return same


@pytest.mark.parametrize("kind", KINDS)
def test_the_decoder_gives_the_sliced_loops_tokens_window_after_window(kind: str) -> None:
    assert _compare(tiny_prior(kind, seed=1), kind, DecodeOptions(path="static", tokens_per_call=5)) == [
        True
    ] * len(WINDOWS)


def test_the_decoder_without_the_transpose_mask_parts_from_the_sliced_loop(
    without_transpose_mask: None,
) -> None:
    """Negative control: the comparison above sees a mask removed."""
    options = DecodeOptions(path="static", tokens_per_call=5)
    assert not all(_compare(tiny_prior("up0", seed=1), "up0", options))


def test_what_earlier_windows_left_in_the_buffers_is_never_seen_while_finite() -> None:
    """A masked key adds 0·v to p·v: nothing, for any finite v (the decoder zeroes its buffers once
    and then only ever writes finite keys and values). Negative control: a NaN left there is seen."""
    prior = tiny_prior("up0", seed=1)
    decoder = WindowDecoder(prior, BATCH, DecodeOptions(path="static"))
    cond, ids = _window(prior, "up0", 0, 0)
    clean = _decoded(decoder, cond, ids, 0, WINDOWS[0], prior.n_ctx)
    for layer in decoder.cache.layers:
        layer.k_flat.fill_(1e4)
        layer.v_flat.fill_(-1e4)
    assert torch.equal(_decoded(decoder, cond, ids, 0, WINDOWS[0], prior.n_ctx), clean)
    assert decoder.row_totals.isfinite().all()
    for layer in decoder.cache.layers:
        layer.v_flat.fill_(float("nan"))
    # NaN logits: the inverse CDF finds no id; the rows are marked, and their ids stay in range (an
    # id past the embedding would end the device context on CUDA)
    drawn = _decoded(decoder, cond, ids, 0, WINDOWS[0], prior.n_ctx)
    assert not decoder.row_totals.isfinite().any()
    assert int(drawn.min()) >= 0 and int(drawn.max()) < prior.config.bins


@pytest.mark.parametrize("kind", ["up0", "top_5b_lyrics", "top_1b_lyrics"])
def test_a_window_reads_nothing_back(kind: str) -> None:
    prior = tiny_prior(kind, seed=1)
    decoder = WindowDecoder(prior, BATCH, DecodeOptions(path="static", tokens_per_call=4))
    cond, ids = _window(prior, kind, 0, 0)  # no known ids: no prefill (its id checks read back)
    generator = torch.Generator().manual_seed(0)
    with dispatched() as ops:
        decoder.sample_window(cond, ids, 40, 0.9, 0, 0.0, generator)
    assert ops["aten.addmm"] > 0 and ops["aten.searchsorted"] == 40  # the counter sees the window
    assert not [op for op in READ_BACKS if ops[op]], ops
    with dispatched() as ops:  # and sees a read-back
        int(decoder.cache.position())
    assert any(ops[op] for op in READ_BACKS)


def test_progress_and_cancel_run_every_k_tokens() -> None:
    prior = tiny_prior("top_5b", seed=1)
    decoder = WindowDecoder(prior, BATCH, DecodeOptions(path="static", tokens_per_call=4))
    cond, ids = _window(prior, "top_5b", 0, 0)
    seen: list[int] = []
    first = decoder.sample_window(
        cond, ids, 30, 0.9, 0, 0.0, torch.Generator().manual_seed(1), seen.append, 10
    )
    assert seen == [8, 16, 24, 30]  # progress_every 10 → every 8 tokens (2 calls of 4), and the last

    class Stop(Exception):
        pass

    def cancel_at_16(done: int) -> None:
        if done == 16:
            raise Stop

    with pytest.raises(Stop):
        decoder.sample_window(cond, ids, 30, 0.9, 0, 0.0, torch.Generator().manual_seed(1), cancel_at_16, 10)
    # a cancelled window leaves nothing behind that the next window sees
    again = decoder.sample_window(cond, ids, 30, 0.9, 0, 0.0, torch.Generator().manual_seed(1))
    assert torch.equal(again, first)


def _cascade_request(top: str) -> SamplingRequest:
    return SamplingRequest(
        mode="ancestral",
        sample_length=2048,  # 3 top windows (hop 0.5: 32 known, 32 new), 4 at level 1, 8 at level 0
        total_length=4000,
        n_samples=2,
        artist="the beatles",
        genre="rock",
        lyrics="la la la" if "lyrics" in top else "",
        hop_fraction=(1.0, 1.0, 0.5),
        max_batch_size=(1, 2, 2),  # level 0: two batches of one through the same decoder
        chunk_size=(8, 8, 8),
        seed=1234,
    )


@pytest.mark.parametrize("top", ["top_5b_lyrics", "top_1b_lyrics"])
def test_a_multi_window_cascade_gives_the_same_codes_on_the_static_path(top: str) -> None:
    priors = [tiny_prior("up0", seed=1), tiny_prior("up1", seed=2), tiny_prior(top, seed=3)]
    vqvae = make_tiny_vqvae()
    sliced = Cascade(vqvae, priors).sample(_cascade_request(top))
    static = Cascade(vqvae, priors, decode=DecodeOptions(path="static", tokens_per_call=7))
    got = static.sample(_cascade_request(top))
    assert all(torch.equal(a, b) for a, b in zip(sliced.codes, got.codes, strict=True))
    # one decoder per (prior, batch), kept between jobs
    assert window_decoder(priors[0], 1, static.decode_options) is window_decoder(
        priors[0], 1, static.decode_options
    )


def test_the_exact_draw_stays_on_the_sliced_loop() -> None:
    priors = [tiny_prior("up0", seed=1), tiny_prior("up1", seed=2), tiny_prior("top_5b", seed=3)]
    vqvae = make_tiny_vqvae()
    request = replace(_cascade_request("top_5b"), levels=(2,), rng="reference")
    sliced = Cascade(vqvae, priors).sample(request)
    static = Cascade(vqvae, priors, decode=DecodeOptions(path="static")).sample(request)
    assert torch.equal(sliced.codes[2], static.codes[2])
    assert priors[2] not in decoding._DECODERS  # no decoder was made


def test_a_freed_prior_takes_its_eager_decoder_and_weights_with_it_without_a_gc() -> None:
    """The decoder holds its prior weakly and its transformer strongly; nothing of it may sit in a
    reference cycle, or the weights and KV cache stay on the GPU until a garbage collection."""
    gc.collect()
    gc.disable()
    try:
        prior = tiny_prior("up0", seed=1)
        weight = weakref.ref(prior.prior.transformer._blocks[0].attn.c_attn.w)
        decoder = window_decoder(prior, BATCH, DecodeOptions(path="static", tokens_per_call=4))
        cond, ids = _window(prior, "up0", 0, WINDOWS[0][0])
        _decoded(decoder, cond, ids, 0, WINDOWS[0], prior.n_ctx)
        assert decoder._calls  # a window built its calls
        freed = weakref.ref(decoder)
        del decoder, prior, cond, ids
        assert freed() is None and weight() is None
    finally:
        gc.enable()


def test_a_prior_keeps_decoders_for_its_jobs_batch_sizes_only() -> None:
    """A job's full batch and its remainder alternate every window without rebuilding; a job of
    other sizes frees them (each size a worker ever sampled used to keep a whole-window KV cache)."""
    assert decoding.batch_rows(5, 3) == {3, 2} and decoding.batch_rows(3, 3) == {3}
    assert decoding.batch_rows(2, 16) == {2}
    gc.collect()
    gc.disable()
    try:
        prior = tiny_prior("up0", seed=1)
        options = DecodeOptions(path="static", tokens_per_call=4)
        job = decoding.batch_rows(5, 3)
        three, two = window_decoder(prior, 3, options, keep=job), window_decoder(prior, 2, options, keep=job)
        assert window_decoder(prior, 3, options, keep=job) is three
        assert window_decoder(prior, 2, options, keep=job) is two
        gone = [weakref.ref(three), weakref.ref(two)]
        del three, two
        one = window_decoder(prior, 1, options, keep=decoding.batch_rows(1, 3))
        assert [ref() for ref in gone] == [None, None]  # freed when another job came, without a gc
        assert window_decoder(prior, 1, options) is one
    finally:
        gc.enable()


def test_a_job_with_a_remainder_batch_builds_each_decoder_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """3 samples in batches of 2 at every level: a batch of 2 and one of 1 every window, each level's
    two decoders built once for the whole job."""
    built: list[tuple[int, int]] = []
    init = WindowDecoder.__init__

    def counted(self: WindowDecoder, prior: JukeboxPrior, batch: int, options: DecodeOptions) -> None:
        built.append((prior.config.level, batch))
        init(self, prior, batch, options)

    monkeypatch.setattr(WindowDecoder, "__init__", counted)
    priors = [tiny_prior("up0", seed=1), tiny_prior("up1", seed=2), tiny_prior("top_5b", seed=3)]
    cascade = Cascade(make_tiny_vqvae(), priors, decode=DecodeOptions(path="static", tokens_per_call=4))
    cascade.sample(request(n_samples=3, max_batch_size=(2, 2, 2)), overlap_levels=False)
    assert sorted(built) == [(0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2)]


def test_defaults_per_device() -> None:
    assert default_decode_options("cpu") == DecodeOptions(path="sliced", tokens_per_call=16, compile=False)
    assert default_decode_options("cuda:0") == DecodeOptions(path="graph", tokens_per_call=16, compile=True)
    priors = [tiny_prior("up0"), tiny_prior("up1"), tiny_prior("top_5b")]
    assert Cascade(make_tiny_vqvae(), priors).decode_options.path == "sliced"


def test_without_cuda_the_graph_path_samples_eagerly_and_says_why_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    prior = tiny_prior("up0", seed=1)
    static = WindowDecoder(prior, BATCH, DecodeOptions(path="static", tokens_per_call=5))
    with caplog.at_level(logging.WARNING, logger="sampler.jukebox.decoding"):
        graph = WindowDecoder(prior, BATCH, DecodeOptions(path="graph", tokens_per_call=5))
        for index, window in enumerate(WINDOWS):
            cond, ids = _window(prior, "up0", index, window[0])
            want = _decoded(static, cond, ids, index, window, prior.n_ctx)
            assert torch.equal(_decoded(graph, cond, ids, index, window, prior.n_ctx), want)
    assert graph.path == "static"
    assert [r.getMessage() for r in caplog.records] == [
        "no CUDA graph for the decode step (CUDA graphs need a CUDA device, this prior is on cpu): "
        "decoding with the eager static step"
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_in_bfloat16_the_tiny_priors_keep_the_sliced_loops_tokens(kind: str) -> None:
    """Half precision: at the tiny priors' widths (32) the static step's bits are the sliced step's,
    at 8-slot and 64-slot blocks, so every token of the window is the same. Wider models part after
    tens to hundreds of tokens (width 128, 64-slot blocks: 5b_lyrics at token 28, 1b_lyrics at 493;
    GPU-PLAN.md §2): same distribution, no bitwise promise."""
    for prior in (tiny_prior(kind, seed=1), wide_tiny_prior(kind)):
        prior.to_compute_dtype(torch.bfloat16)
        n_ctx, known = prior.n_ctx, prior.n_ctx // 4
        config = prior.config
        labels = tiny_labels(kind, seed=2, total_length=max(2048, config.sample_length))
        labels[:, 1:3] = torch.tensor([0, config.sample_length])  # the window is the whole song
        z_cond = None
        if config.cond_downsample is not None:
            z_cond = torch.randint(config.l_bins, (BATCH, n_ctx // config.cond_downsample))
        cond = prior.get_conditioning(labels, z_cond)
        ids = prior.codes_to_ids(tiny_codes(kind, seed=2, length=n_ctx))[:, :known]
        window = (known, 0.99, 0, 0.0)
        decoder = WindowDecoder(prior, BATCH, DecodeOptions(path="static"))
        assert torch.equal(
            _decoded(decoder, cond, ids, 3, window, n_ctx), _sliced(prior, cond, ids, 3, window)
        )


@pytest.mark.parametrize(("kind", "kinds"), [("up0", 3), ("top_1b_lyrics", 4), ("top_5b_lyrics", 4)])
def test_compiled_blocks_make_one_graph_per_attention_kind(
    kind: str, kinds: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dynamo traces `static_block_step` once per attention kind for the whole window (and later
    windows), and the traced graphs give the eager static step's tokens (a counting backend runs the
    traced graph as is; the inductor test below compiles it)."""
    torch._dynamo.reset()
    counter = CompileCounter()
    monkeypatch.setattr(decoding, "COMPILE_BACKEND", counter)
    try:
        prior = tiny_prior(kind, seed=1)
        eager = WindowDecoder(prior, BATCH, DecodeOptions(path="static", tokens_per_call=5))
        compiled = WindowDecoder(prior, BATCH, DecodeOptions(path="static", tokens_per_call=5, compile=True))
        for index, window in enumerate(WINDOWS):
            cond, ids = _window(prior, kind, index, window[0])
            want = _decoded(eager, cond, ids, index, window, prior.n_ctx)
            assert torch.equal(_decoded(compiled, cond, ids, index, window, prior.n_ctx), want)
        assert counter.frame_count == kinds
    finally:
        torch._dynamo.reset()


def test_compiled_blocks_build_on_a_torch_before_dynamos_recompile_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torch < 2.7 (the worker image's 2.5.1) names the per-function graph limit `cache_size_limit`:
    the default CUDA options must still build their decoder, with the limit raised."""
    before_27 = types.SimpleNamespace(cache_size_limit=8)  # torch 2.5's name for the limit
    monkeypatch.setattr(decoding, "dynamo_config", lambda: before_27)
    decoding.compiled_block_step.cache_clear()
    try:
        decoder = WindowDecoder(tiny_prior("up0", seed=1), BATCH, DecodeOptions(path="static", compile=True))
    finally:
        decoding.compiled_block_step.cache_clear()
    assert decoder.compiled and before_27.cache_size_limit == decoding.COMPILED_GRAPHS_LIMIT


def test_a_compiler_that_cannot_be_set_up_decodes_with_eager_blocks_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(decoding, "dynamo_config", types.SimpleNamespace)  # neither name
    decoding.compiled_block_step.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="sampler.jukebox.decoding"):
            decoder = WindowDecoder(
                tiny_prior("up0", seed=1), BATCH, DecodeOptions(path="static", compile=True)
            )
    finally:
        decoding.compiled_block_step.cache_clear()
    assert not decoder.compiled and decoder._block_step is None
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith("no compiled decode blocks (") and message.endswith(
        "decoding with eager torch blocks"
    )


def test_a_compile_that_fails_midway_decodes_with_eager_blocks_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The compiler fails on the second attention kind, after the first compiled: the window still
    samples the eager static tokens, the log says why, and the decoder no longer claims `compiled`
    (bench/gpu.py must not time eager blocks under the compiled row's name)."""
    graphs = []

    def fails_on_the_second(graph: torch.fx.GraphModule, inputs: list[Tensor]) -> Any:
        graphs.append(graph)
        if len(graphs) == 2:
            raise RuntimeError("the compiler gave up")
        return graph.forward

    torch._dynamo.reset()
    monkeypatch.setattr(decoding, "COMPILE_BACKEND", fails_on_the_second)
    try:
        prior = tiny_prior("up0", seed=1)
        eager = WindowDecoder(prior, BATCH, DecodeOptions(path="static", tokens_per_call=5))
        compiled = WindowDecoder(prior, BATCH, DecodeOptions(path="static", tokens_per_call=5, compile=True))
        assert compiled.compiled
        window = WINDOWS[0]
        cond, ids = _window(prior, "up0", 0, window[0])
        want = _decoded(eager, cond, ids, 0, window, prior.n_ctx)
        with caplog.at_level(logging.WARNING, logger="sampler.jukebox.decoding"):
            got = _decoded(compiled, cond, ids, 0, window, prior.n_ctx)
    finally:
        torch._dynamo.reset()
    assert torch.equal(got, want)
    assert len(graphs) == 2 and not compiled.compiled and not eager.compiled
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith("building the decode blocks failed (") and "the compiler gave up" in message
    assert message.endswith("): decoding with eager torch blocks")


@pytest.mark.slow
def test_inductor_compiled_blocks_give_the_eager_static_tokens() -> None:
    """The real compiler on the CPU (about 10 s a graph when its cache is cold), one upsampler
    window: 3 graphs (block, transpose, previous block), the eager static path's tokens."""
    torch._dynamo.reset()
    counters.clear()
    try:
        prior = tiny_prior("up0", seed=1)
        eager = WindowDecoder(prior, BATCH, DecodeOptions(path="static"))
        compiled = WindowDecoder(prior, BATCH, DecodeOptions(path="static", compile=True))
        window = WINDOWS[1]
        cond, ids = _window(prior, "up0", 1, window[0])
        want = _decoded(eager, cond, ids, 1, window, prior.n_ctx)
        assert torch.equal(_decoded(compiled, cond, ids, 1, window, prior.n_ctx), want)
        assert counters["stats"]["unique_graphs"] == 3
    finally:
        torch._dynamo.reset()


def test_warm_up_compiles_every_levels_blocks_before_the_first_job(monkeypatch: pytest.MonkeyPatch) -> None:
    torch._dynamo.reset()
    counter = CompileCounter()
    monkeypatch.setattr(decoding, "COMPILE_BACKEND", counter)
    try:
        priors = [tiny_prior("up0", seed=1), tiny_prior("up1", seed=2), tiny_prior("top_1b_lyrics", seed=3)]
        vqvae = make_tiny_vqvae()
        options = DecodeOptions(path="static", compile=True)
        cascade = Cascade(vqvae, priors, decode=options)
        compiled_after_each: list[int] = []  # (its signs of life, for the worker's stall watch)
        cascade.warm_up([2, 2, 2], lambda: compiled_after_each.append(counter.frame_count))
        # the upsamplers share their 3 graphs (same shapes); 1b_lyrics' blocks of 10 and prime layer: 4
        assert counter.frame_count == 7
        assert compiled_after_each == [3, 3, 7]  # after each level's decoder
        request = replace(_cascade_request("top_1b_lyrics"), sample_length=1024, max_batch_size=(2, 2, 2))
        got = cascade.sample(request)
        assert counter.frame_count == 7  # nothing left to compile
        want = Cascade(vqvae, priors).sample(request)
        assert all(torch.equal(a, b) for a, b in zip(want.codes, got.codes, strict=True))
    finally:
        torch._dynamo.reset()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize(
    ("dtype", "compile"), [(torch.float32, False), (torch.float16, False), (torch.float32, True)]
)
def test_on_cuda_graph_replays_give_the_eager_static_tokens(
    dtype: torch.dtype, compile: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """The captured calls replay the eager static step's kernels (compiled: inductor's, in fp32 the
    same tokens at these sizes); no fallback is logged."""
    torch._dynamo.reset()
    kind, device = "top_5b_lyrics", torch.device("cuda")
    prior = tiny_prior(kind, seed=1).to(device).to_compute_dtype(dtype)
    static = WindowDecoder(prior, BATCH, DecodeOptions(path="static", tokens_per_call=5))
    with caplog.at_level(logging.WARNING, logger="sampler.jukebox.decoding"):
        graph = WindowDecoder(prior, BATCH, DecodeOptions(path="graph", tokens_per_call=5, compile=compile))
        assert_same_tokens_on_cuda(prior, kind, static, graph)
    assert graph.path == "graph" and not caplog.records
    torch._dynamo.reset()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_on_the_second_gpu_graph_replays_give_the_eager_static_tokens(kernels: str) -> None:
    """A worker on cuda:1 samples from threads whose current device is cuda:0 (CUDA's per-thread
    default): its graphs must capture, and its Triton kernels launch, on cuda:1."""
    kind, device = "top_5b_lyrics", torch.device("cuda:1")
    assert torch.cuda.current_device() == 0
    prior = tiny_prior(kind, seed=1).to(device)
    static = WindowDecoder(prior, BATCH, DecodeOptions(path="static", tokens_per_call=5))
    graph = WindowDecoder(prior, BATCH, DecodeOptions(path="graph", tokens_per_call=5, kernels=kernels))
    assert_same_tokens_on_cuda(prior, kind, static, graph)
    assert graph.path == "graph" and graph.kernels == kernels


def assert_same_tokens_on_cuda(
    prior: JukeboxPrior, kind: str, want: WindowDecoder, got: WindowDecoder
) -> None:
    """Both decoders draw the same tokens in every window of WINDOWS (same seeds, on the prior's GPU)."""
    device = prior.prior.x_emb.weight.device
    for index, (known, temperature, top_k, top_p) in enumerate(WINDOWS):
        cond = prior.get_conditioning(tiny_labels(kind, seed=index).to(device))
        ids = prior.codes_to_ids(tiny_codes(kind, seed=index)).to(device)[:, :known]
        tokens = []
        for decoder in (want, got):
            generator = torch.Generator(device=device).manual_seed(index)
            new = prior.n_ctx - known
            tokens.append(decoder.sample_window(cond, ids, new, temperature, top_k, top_p, generator))
        assert torch.equal(tokens[0], tokens[1]), f"window {index}"


@pytest.mark.parametrize("path", ["sliced", "static"])
def test_a_samples_codes_do_not_depend_on_the_workers_batch_size(path: str) -> None:
    """A job resumed on a worker with another JUKEBOT_MAX_BATCH_SIZE keeps its codes: each window's
    uniforms are drawn for all samples before the rows are split into batches."""
    priors = [tiny_prior("up0", seed=1), tiny_prior("up1", seed=2), tiny_prior("top_5b", seed=3)]
    cascade = Cascade(make_tiny_vqvae(), priors, decode=DecodeOptions(path=path, tokens_per_call=4))
    base = replace(_cascade_request("top_5b"), n_samples=3)
    whole = cascade.sample(replace(base, max_batch_size=(3, 3, 3)), overlap_levels=False)
    for sizes in [(1, 1, 1), (2, 2, 2), (2, 1, 3)]:
        split = cascade.sample(replace(base, max_batch_size=sizes), overlap_levels=False)
        assert all(torch.equal(a, b) for a, b in zip(whole.codes, split.codes, strict=True)), sizes
