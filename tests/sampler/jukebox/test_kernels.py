"""The hand-fused Triton decode kernels (sampler/jukebox/kernels.py) against the torch static step.

Without CUDA they run under Triton's interpreter (TRITON_INTERPRET=1, set by tests/conftest.py before
anything imports triton: it decides when it decorates its own functions). The interpreter costs
about 15 ms a launch, so the block checks walk a whole window with the torch step and run the kernels
at chosen positions only (on copies of the layer's cache), and one short two-window run checks the
decoder's tokens. In fp32 the kernels sum in another order than torch's GEMMs: they promise float
rounding, not bits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import torch

from sampler.jukebox import kernels
from sampler.jukebox.decoding import DecodeOptions, WindowDecoder, decode_options
from sampler.jukebox.prior import JukeboxPrior
from sampler.jukebox.transformer import (
    GELU_SCALE,
    MASK_VALUE,
    BlockStep,
    StaticRead,
    _norm,
    _score_scale,
)
from tests.sampler.jukebox.test_decoding import (
    BATCH,
    KINDS,
    _decoded,
    _sliced,
    _window,
    assert_same_tokens_on_cuda,
)
from tests.sampler.jukebox.tiny_priors import tiny_labels, tiny_prior, tiny_z_cond

pytestmark = pytest.mark.usefixtures("single_thread", "no_fallback")

TRITON = DecodeOptions(path="static", tokens_per_call=5, kernels="triton")
# Music positions of the window where the kernels run: the first (a previous block with no keys), a
# block's last and first slots, two inside and the window's last (1b_lyrics' prime attention keeps its
# lyric prefix's slots at all of them).
POSITIONS = (0, 7, 8, 13, 31, 63)


@pytest.fixture
def no_fallback(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """A decoder that cannot build the kernels falls back to the torch step with a warning: here
    that would compare torch with torch, so any such warning fails the test."""
    with caplog.at_level(logging.WARNING, logger="sampler.jukebox.decoding"):
        yield
    assert [r.getMessage() for r in caplog.get_records("call") if r.name == "sampler.jukebox.decoding"] == []


Outputs = dict[tuple[int, int], torch.Tensor]


def _walk(
    prior: JukeboxPrior,
    kind: str,
    dtype: torch.dtype,
    kernel_step: BlockStep | None,
    device: torch.device = torch.device("cpu"),
) -> tuple[Outputs, Outputs]:
    """A whole window with the torch static step, every block fed the same random input; at POSITIONS
    also `kernel_step` on a copy of the layer's cache. Returns the torch step's and the kernel step's
    outputs (fp32) and checks that both wrote the same k, v."""
    prior.to(device).to_compute_dtype(dtype)
    transformer = prior.prior.transformer
    z_cond = tiny_z_cond(kind, seed=0)
    labels = tiny_labels(kind, seed=0).to(device)
    cond = prior.get_conditioning(labels, None if z_cond is None else z_cond.to(device))
    state = prior.start(cond, prior.n_ctx)
    if state.prefix_queued:  # 1b_lyrics: the lyric prefix first, as the decoder does
        prior.feed_queued_prefix(state)
    cache = state.cache
    slots = {b.attn.attn_func: kv.slots for b, kv in zip(transformer._blocks, cache.layers, strict=True)}
    generator = torch.Generator().manual_seed(5)
    torch_out: Outputs = {}
    kernel_out: Outputs = {}
    with torch.inference_mode():
        for at in range(prior.n_ctx):  # music positions (1b_lyrics' cache holds its prefix first)
            x = torch.randn(BATCH, prior.config.prior_width, generator=generator).to(device, cache.dtype)
            pos = cache.position()
            reads = {
                g.kind: g.static_read(pos, slots[g.kind], cache.key_index) for g in transformer._geometries
            }
            for index, (block, layer) in enumerate(zip(transformer._blocks, cache.layers, strict=True)):
                read = reads[block.attn.attn_func]
                if kernel_step is not None and at in POSITIONS:
                    k_copy, v_copy = layer.k_flat.clone(), layer.v_flat.clone()
                    weights = block.static_weights()
                    attn = block.attn
                    got = kernel_step(
                        x.clone(), k_copy, v_copy, weights, read, attn.heads, attn.cross, attn.fast
                    )
                    kernel_out[at, index] = got.float()
                torch_out[at, index] = block.decode_static(x.clone(), layer, read).float()
                if kernel_step is not None and at in POSITIONS:
                    torch.testing.assert_close(k_copy, layer.k_flat, rtol=1e-2, atol=1e-2)
                    torch.testing.assert_close(v_copy, layer.v_flat, rtol=1e-2, atol=1e-2)
            cache.advance_position()
    return torch_out, kernel_out


def _worst(got: Outputs, want: Outputs) -> float:
    return max(float((g - want[key]).abs().max() / want[key].abs().max()) for key, g in got.items())


@pytest.mark.parametrize("kind", KINDS)
def test_every_block_output_is_the_torch_steps_to_float_rounding(kind: str) -> None:
    """Each attention kind of the prior at the chosen positions: within 1e-5 of `static_block_step`
    in fp32, with the same k, v written."""
    want, got = _walk(tiny_prior(kind, seed=3), kind, torch.float32, kernels.triton_block_step)
    assert len(got) == len(POSITIONS) * len(tiny_prior(kind).prior.transformer._blocks)
    assert _worst(got, want) < 1e-5


def test_with_tensor_core_products_the_block_outputs_stay_within_float_rounding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`LINEAR_DOT`: fp32 inputs multiply in full fp32 (no TF32), so the 1e-5 holds."""
    monkeypatch.setattr(kernels, "LINEAR_DOT", True)
    want, got = _walk(
        tiny_prior("top_1b_lyrics", seed=3), "top_1b_lyrics", torch.float32, kernels.triton_block_step
    )
    assert _worst(got, want) < 1e-5


@pytest.mark.parametrize("dot", [False, True], ids=["sum", "dot"])
def test_with_k_split_the_block_outputs_stay_within_float_rounding(
    dot: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`LINEAR_SPLIT_K`: 16-row K tiles split the tiny prior's linears into 2 (K 32) and 3 parts (the
    MLP's K 128, 8 tiles), whose fp32 sums the second launch adds: still within 1e-5 of the torch step."""
    monkeypatch.setattr(kernels, "LINEAR_DOT", dot)
    monkeypatch.setattr(kernels, "LINEAR_BLOCK_K", 16)
    monkeypatch.setattr(kernels, "LINEAR_SPLIT_K", 3)
    assert [kernels.linear_grid(k, n, 132)[1] for k, n in ((32, 96), (128, 32))] == [2, 3]
    want, got = _walk(tiny_prior("up0", seed=3), "up0", torch.float32, kernels.triton_block_step)
    assert _worst(got, want) < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_with_fused_attention_the_block_outputs_stay_within_float_rounding(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`FUSED_ATTEND_KEYS` over every tiny attention kind (all read at most 128 keys): one attention
    launch per block, within 1e-5 of the torch step, the same k, v written (a kept prime slot too)."""
    monkeypatch.setattr(kernels, "FUSED_ATTEND_KEYS", kernels.FUSED_MAX_KEYS)
    monkeypatch.setattr(kernels, "FUSED_CHUNK_D", 8)  # head dims 16: two chunks
    launched: list[str] = []
    for name in ("_attend_kernel", "_score_kernel", "_mix_kernel"):
        kernel = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, _Counted(kernel, name, launched))
    want, got = _walk(tiny_prior(kind, seed=3), kind, torch.float32, kernels.triton_block_step)
    assert _worst(got, want) < 1e-5
    assert set(launched) == {"_attend_kernel"}


class _Counted:
    """A Triton kernel whose launches (`kernel[grid](...)`) are recorded by name."""

    def __init__(self, kernel: Any, name: str, launched: list[str]) -> None:
        self.kernel, self.name, self.launched = kernel, name, launched

    def __getitem__(self, grid: Any) -> Any:
        self.launched.append(self.name)
        return self.kernel[grid]


def test_the_kernels_without_the_transpose_mask_part_from_the_torch_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Negative control: the kernel reading a transpose layer's whole column is seen."""
    attend = kernels.attend

    def unmasked(qkv, k_flat, v_flat, read: StaticRead, heads: int, cross: bool):  # type: ignore[no-untyped-def]
        return attend(qkv, k_flat, v_flat, replace(read, mask=None), heads, cross)

    monkeypatch.setattr(kernels, "attend", unmasked)
    want, got = _walk(tiny_prior("up0", seed=3), "up0", torch.float32, kernels.triton_block_step)
    assert _worst(got, want) > 1e-2


@pytest.mark.parametrize(
    ("kind", "dot"), [("up0", False), ("top_5b_lyrics", False), ("up0", True)], ids=["up0", "5b", "up0-dot"]
)
def test_in_float16_the_kernels_are_no_further_from_fp32_than_the_torch_step(
    kind: str, dot: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half precision, the stated tolerance: summing in fp32 and rounding once, each block's output is
    as close to the fp32 step's as the fp16 torch step's is (at most 1.25× its error), and within
    3 % of its scale; with `linear`'s tensor-core products too."""
    monkeypatch.setattr(kernels, "LINEAR_DOT", dot)
    exact, _ = _walk(tiny_prior(kind, seed=3), kind, torch.float32, None)
    torch_half, triton_half = _walk(tiny_prior(kind, seed=3), kind, torch.float16, kernels.triton_block_step)
    torch_error = _worst({key: torch_half[key] for key in triton_half}, exact)
    triton_error = _worst(triton_half, exact)
    assert triton_error <= 1.25 * torch_error
    assert triton_error < 0.03


def test_the_decoder_with_the_kernels_gives_the_sliced_loops_tokens_window_after_window() -> None:
    """Two short windows in the same buffers, K = 5, temperature and nucleus filter."""
    prior = tiny_prior("up0", seed=1)
    decoder = WindowDecoder(prior, BATCH, TRITON)
    assert decoder._block_step is kernels.triton_block_step
    for index, window in enumerate(((54, 0.9, 0, 0.0), (58, 0.8, 0, 0.8))):
        cond, ids = _window(prior, "up0", index, window[0])
        want = _sliced(prior, cond, ids, index, window)
        assert torch.equal(_decoded(decoder, cond, ids, index, window, prior.n_ctx), want)


@pytest.mark.parametrize("dot", [False, True], ids=["sum", "dot"])
@pytest.mark.parametrize("split", [2, 3, 8])
def test_a_linear_split_over_k_adds_its_parts_to_layer_norm_matmul_gelu_and_residual(
    dot: bool, split: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """K = 300 is five 64-row tiles: asked for 2, 3 or 8 parts it runs 2 (3 + 2 tiles), 3 (2 + 2 + 1)
    or 5 (a tile each, none empty), each part's sums in fp32, added in order before the epilogue; the
    same results to float rounding, and the same bits at every call."""
    monkeypatch.setattr(kernels, "LINEAR_DOT", dot)
    monkeypatch.setattr(kernels, "LINEAR_BLOCK_N", 32)
    monkeypatch.setattr(kernels, "LINEAR_BLOCK_K", 64)
    monkeypatch.setattr(kernels, "LINEAR_SPLIT_K", split)
    assert kernels.linear_grid(300, 70, 132) == (3, {2: 2, 3: 3, 8: 5}[split])
    generator = torch.Generator().manual_seed(1)
    x, w, b = (torch.randn(*shape, generator=generator) for shape in ((3, 300), (300, 70), (70,)))
    w *= 0.1  # outputs of a few units: quick-GELU's exp stays finite
    ln_w, ln_b, r = (torch.randn(*shape, generator=generator) for shape in ((300,), (300,), (3, 70)))
    h = torch.addmm(b, _norm(x, (300,), ln_w, ln_b, 1e-5), w)
    got = kernels.linear(x, w, b, norm=(ln_w, ln_b), gelu=True, residual=r)
    torch.testing.assert_close(got, h * torch.sigmoid(GELU_SCALE * h) + r)
    assert torch.equal(kernels.linear(x, w, b, norm=(ln_w, ln_b), gelu=True, residual=r), got)
    torch.testing.assert_close(kernels.linear(x, w, b), torch.addmm(b, x, w))


def test_k_is_split_only_where_the_output_strips_leave_multiprocessors_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The published layers' shapes on an H100's 132 SMs at 32-column strips: every upsampler linear
    (45 or 60 strips) and 5b's c_attn (113) split, 5b's MLP (150) does not; never more parts than K
    tiles; LINEAR_SPLIT_K 1 never splits."""
    monkeypatch.setattr(kernels, "LINEAR_BLOCK_N", 32)
    monkeypatch.setattr(kernels, "LINEAR_BLOCK_K", 64)
    monkeypatch.setattr(kernels, "LINEAR_SPLIT_K", 4)
    shapes = ((1920, 1440), (480, 1920), (1920, 1920), (4800, 3600), (4800, 4800))
    assert [kernels.linear_grid(k, n, 132) for k, n in shapes] == [
        (45, 4),
        (60, 4),
        (60, 4),
        (113, 4),
        (150, 1),
    ]
    assert kernels.linear_grid(100, 1920, 132) == (60, 2)  # two K tiles
    assert kernels.linear_grid(1920, 1920, 60) == (60, 1)  # as many strips as SMs
    monkeypatch.setattr(kernels, "LINEAR_SPLIT_K", 1)
    assert kernels.linear_grid(1920, 1920, 132) == (60, 1)


@pytest.mark.parametrize("dot", [False, True], ids=["sum", "dot"])
def test_linear_over_several_tiles_is_layer_norm_matmul_gelu_and_residual(
    dot: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Shapes that fill no tile: 3 rows, K = 100 over two K tiles, N = 70 over three N tiles; the
    broadcast sum and the tensor-core product."""
    monkeypatch.setattr(kernels, "LINEAR_DOT", dot)
    monkeypatch.setattr(kernels, "LINEAR_BLOCK_N", 32)
    monkeypatch.setattr(kernels, "LINEAR_BLOCK_K", 64)
    generator = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(*shape, generator=generator) for shape in ((3, 100), (100, 70), (70,)))
    ln_w, ln_b, r = (torch.randn(*shape, generator=generator) for shape in ((100,), (100,), (3, 70)))
    h = torch.addmm(b, _norm(x, (100,), ln_w, ln_b, 1e-5), w)
    torch.testing.assert_close(
        kernels.linear(x, w, b, norm=(ln_w, ln_b), gelu=True, residual=r),
        h * torch.sigmoid(GELU_SCALE * h) + r,
    )
    torch.testing.assert_close(kernels.linear(x, w, b), torch.addmm(b, x, w))
    with pytest.raises(ValueError, match="at most 16 rows"):
        kernels.linear(torch.zeros(17, 8), torch.zeros(8, 8), torch.zeros(8))
    with pytest.raises(ValueError, match="contiguous"):
        kernels.linear(torch.zeros(2, 8), torch.zeros(8, 8).t(), torch.zeros(8))


@pytest.mark.parametrize("fused", [False, True], ids=["two launches", "fused"])
def test_attend_over_several_key_tiles_is_masked_softmax_attention(
    fused: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """70 keys read through an index, every other masked, 2 heads: scored in three programs per row,
    mixed in five key tiles by three programs per row (head dims 0-3, 4-7, 8-11); the new k, v written
    to slot 5 and seen there. Fused: one launch of three programs per row, each scoring all 70 keys
    (padded to 128) 8 head dims at a time and storing its strip of the new k, v."""
    monkeypatch.setattr(kernels, "MIX_BLOCK_KEYS", 16)
    monkeypatch.setattr(kernels, "MIX_BLOCK_D", 4)
    monkeypatch.setattr(kernels, "FUSED_CHUNK_D", 8)
    monkeypatch.setattr(kernels, "FUSED_ATTEND_KEYS", 128 if fused else 0)
    assert kernels.fused_attend(70, 12, torch.float32) == fused
    assert not kernels.fused_attend(70, 150, torch.float16)  # 300-byte rows: never fused
    generator = torch.Generator().manual_seed(1)
    n, heads, d, slots = 2, 2, 12, 80
    qkv = torch.randn(n, 3 * heads * d, generator=generator)
    k_flat, v_flat = (torch.randn(n * heads, slots, d, generator=generator) for _ in range(2))
    index = torch.randperm(slots, generator=generator)[:70]
    mask = torch.arange(70) % 2 == 0
    write = torch.tensor([5])
    mask[(index == 5).nonzero()] = True
    read = StaticRead(write=write, index=index, mask=mask)
    k_want, v_want = k_flat.clone(), v_flat.clone()
    k_want[:, 5] = qkv.view(n, 3, heads, d)[:, 1].reshape(n * heads, d)
    v_want[:, 5] = qkv.view(n, 3, heads, d)[:, 2].reshape(n * heads, d)
    q = qkv.view(n, 3, heads, d)[:, 0].reshape(n * heads, 1, d)
    scores = (q @ k_want[:, index].transpose(1, 2)) * _score_scale(d)
    probs = torch.softmax(torch.where(mask, scores, MASK_VALUE), dim=-1)
    want = (probs @ v_want[:, index]).view(n, heads * d)
    torch.testing.assert_close(kernels.attend(qkv, k_flat, v_flat, read, heads, cross=False), want)
    torch.testing.assert_close(k_flat, k_want)
    torch.testing.assert_close(v_flat, v_want)


# ---- on a GPU (scripts/gpu-check.sh runs these): the compiled kernels, graph replays, fp16

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("dot", [False, True], ids=["sum", "dot"])
@pytest.mark.parametrize("kind", KINDS)
def test_on_cuda_every_block_output_is_the_torch_steps(
    kind: str, dot: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fp32 within 1e-5 (TF32 off); fp16 no further from fp32 than the fp16 torch step (× 1.25); with
    `linear`'s broadcast sum and with its tensor-core product."""
    monkeypatch.setattr(kernels, "LINEAR_DOT", dot)
    device = torch.device("cuda")
    allowed = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        exact, got = _walk(tiny_prior(kind, seed=3), kind, torch.float32, kernels.triton_block_step, device)
        assert _worst(got, exact) < 1e-5
        torch_half, triton_half = _walk(
            tiny_prior(kind, seed=3), kind, torch.float16, kernels.triton_block_step, device
        )
    finally:
        torch.backends.cuda.matmul.allow_tf32 = allowed
    torch_error = _worst({key: torch_half[key] for key in triton_half}, exact)
    assert _worst(triton_half, exact) <= 1.25 * torch_error


@cuda
@pytest.mark.parametrize("launch", ["plain", "pdl", "split", "fused"])
def test_on_cuda_graph_replays_of_the_kernels_give_the_eager_torch_steps_tokens(
    launch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fp32, window after window: the captured Triton calls draw the eager torch step's tokens; also
    with programmatic dependent launch, each kernel waiting for the last one inside the graph, with
    every `linear` split over K (16-row K tiles: 2 to 8 parts), its parts' buffer allocated in the graph,
    and with each attention in one launch (`FUSED_ATTEND_KEYS`)."""
    device = torch.device("cuda")
    pdl = launch == "pdl"
    if pdl and not kernels.pdl_capable(device):
        pytest.skip("programmatic dependent launch needs compute capability 9.0 or later")
    monkeypatch.setattr(kernels, "PDL", pdl)
    if launch == "split":
        monkeypatch.setattr(kernels, "LINEAR_BLOCK_K", 16)
        monkeypatch.setattr(kernels, "LINEAR_SPLIT_K", 8)
    if launch == "fused":
        monkeypatch.setattr(kernels, "FUSED_ATTEND_KEYS", kernels.FUSED_MAX_KEYS)
    kind = "top_5b_lyrics"
    prior = tiny_prior(kind, seed=1).to(device)
    static = WindowDecoder(prior, BATCH, DecodeOptions(path="static", tokens_per_call=5))
    graph = WindowDecoder(prior, BATCH, DecodeOptions(path="graph", tokens_per_call=5, kernels="triton"))
    assert_same_tokens_on_cuda(prior, kind, static, graph)
    assert graph.path == "graph" and graph.kernels == "triton"


@pytest.mark.parametrize("no_fallback", [None])  # this test expects the warning
def test_where_triton_cannot_run_the_decoder_says_why_once_and_keeps_the_torch_step(
    no_fallback: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(kernels, "unavailable", lambda device, rows: "triton is not installed")
    with caplog.at_level(logging.WARNING, logger="sampler.jukebox.decoding"):
        decoder = WindowDecoder(tiny_prior("up0", seed=1), BATCH, TRITON)
    assert decoder._block_step is None
    assert [r.getMessage() for r in caplog.records] == [
        "no Triton decode kernels (triton is not installed): decoding with the torch block step"
    ]


def test_a_triton_older_than_the_kernels_need_is_unavailable_with_its_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """torch 2.5's Triton 3.1 has no `triton.knobs` nor the `launch_pdl` option: never launched."""
    monkeypatch.setattr(kernels, "TRITON_RECENT", False)
    reason = kernels.unavailable(torch.device("cuda"), 3)
    assert (
        reason == f"triton {kernels.triton.__version__} is older than the kernels need ({kernels.MIN_TRITON})"
    )


@pytest.mark.parametrize("no_fallback", [None])  # this test expects the warning
def test_kernels_that_fail_to_import_leave_the_torch_step_and_say_why(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import sys

    import sampler.jukebox

    monkeypatch.delattr(sampler.jukebox, "kernels")
    monkeypatch.setitem(sys.modules, "sampler.jukebox.kernels", None)  # as an import that raises
    with caplog.at_level(logging.WARNING, logger="sampler.jukebox.decoding"):
        decoder = WindowDecoder(tiny_prior("up0", seed=1), BATCH, TRITON)
    assert decoder.kernels == "torch" and decoder._block_step is None
    (message,) = [r.getMessage() for r in caplog.records]
    assert message.startswith(
        "no Triton decode kernels (ModuleNotFoundError: import of sampler.jukebox.kernels"
    )
    assert message.endswith("): decoding with the torch block step")


@pytest.mark.parametrize("no_fallback", [None])  # this test expects the warning
def test_a_batch_over_the_kernels_rows_decodes_with_the_torch_step(
    no_fallback: None, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator's JUKEBOT_MAX_BATCH_SIZE above MAX_ROWS: the torch step, not a failed job."""
    batch = kernels.MAX_ROWS + 1
    with caplog.at_level(logging.WARNING, logger="sampler.jukebox.decoding"):
        decoder = WindowDecoder(tiny_prior("up0", seed=1), batch, TRITON)
    assert decoder.kernels == "torch" and decoder._block_step is None
    assert [r.getMessage() for r in caplog.records] == [
        f"no Triton decode kernels (they take at most {kernels.MAX_ROWS} samples at once, "
        f"this batch has {batch}): decoding with the torch block step"
    ]
    assert WindowDecoder(tiny_prior("up0", seed=1), kernels.MAX_ROWS, TRITON).kernels == "triton"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA machines run the kernels compiled")
def test_the_kernels_say_where_they_cannot_run() -> None:
    assert kernels.unavailable(torch.device("cpu")) is None  # tests/conftest.py chose the interpreter
    assert "CUDA device" in (kernels.unavailable(torch.device("meta")) or "")
    # the interpreter has no grid dependencies: PDL asked for, the kernels launch as before
    assert not kernels.pdl_capable(torch.device("cpu"))


def test_with_pdl_asked_for_where_it_cannot_run_the_kernels_give_the_same_results(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    generator = torch.Generator().manual_seed(2)
    x, w, b = (torch.randn(*shape, generator=generator) for shape in ((3, 40), (40, 24), (24,)))
    before = kernels.linear(x, w, b, gelu=True)
    monkeypatch.setattr(kernels, "PDL", True)
    assert torch.equal(kernels.linear(x, w, b, gelu=True), before)
    assert "at most 16 samples at once, this batch has 17" in (
        kernels.unavailable(torch.device("cpu"), 17) or ""
    )


def test_the_runner_option_chooses_the_kernels() -> None:
    assert decode_options("cpu").kernels == "torch"
    assert decode_options("cuda", kernels="auto").kernels == "torch"
    assert decode_options("cuda", kernels=" Triton ").kernels == "triton"
    with pytest.raises(ValueError, match="decode_kernels must be one of auto, torch, triton, got 'cuda'"):
        decode_options("cpu", kernels="cuda")


def test_the_mix_pipelines_its_keys_only_where_v_rows_are_16_byte_aligned() -> None:
    assert kernels.mix_stages(480, torch.float16) == kernels.MIX_STAGES > 1  # the upsamplers
    assert kernels.mix_stages(128, torch.float32) == kernels.MIX_STAGES
    assert kernels.mix_stages(150, torch.float16) == 1  # 5b_lyrics: 300-byte rows
    assert kernels.mix_stages(150, torch.float32) == 1
    assert kernels.mix_stages(4, torch.float16) == 1
