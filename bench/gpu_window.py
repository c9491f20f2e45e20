"""Sections E, F and G of `bench/gpu.py`: what a window costs besides its decode steps, and two
upsampler levels sampled at once.

E: prefill of one window's known tokens per prior (4096 for the upsamplers, 7/8 of the window at
   the top), in the reference's chunks and in one pass; scaled from the slice to full depth.
F: the upsampler conditioner, the lyric encoder with the cross-attention keys and values, and the
   VQ-VAE decode of 3 × 60 s at level 0.
G: two upsampler slices (levels 1 and 0), each a captured K=16 graph, replayed alone and
   interleaved on two CUDA streams; the interleaved tokens must equal the sequential ones.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from functools import partial

import torch

from bench.gpu_context import Context
from bench.gpu_decode import SliceRun
from bench.gpu_facts import BATCH, PREFILL_TOKENS_PER_MINUTE, STEPS_PER_MINUTE
from bench.gpu_models import PRIORS, attn_funcs, prior_config, random_ids, window_tokens
from bench.gpu_paths import StaticStepper, prefilled, window_uniforms
from sampler.jukebox.registry import SAMPLE_RATE
from sampler.jukebox.transformer import CROSS
from sampler.jukebox.vqvae import build_vqvae


def _seconds(ctx: Context, fn: Callable[[], object], repeats: int) -> float:
    """Best of `repeats` timed calls after one warm-up, synchronised."""
    fn()
    ctx.sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        ctx.sync()
        times.append(time.perf_counter() - start)
    return min(times)


def _peak_gb(ctx: Context) -> float | None:
    return torch.cuda.max_memory_allocated(ctx.device) / 1e9 if ctx.cuda else None


def _reset_peak(ctx: Context) -> None:
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats(ctx.device)


# ---- E


def prefill(ctx: Context) -> None:
    for name, spec in PRIORS.items():
        run = ctx.build(
            "E", f"{name}: build the slice", ctx.seconds(5, 0.5), partial(SliceRun.build, ctx, spec)
        )
        if run is None:
            continue
        known_len, _ = window_tokens(run.prior.config)
        known = random_ids(run.prior, BATCH, known_len, ctx.device)
        for method, chunk in (("reference chunks", spec.reference_chunk), ("one pass", known_len)):
            estimate = ctx.seconds(3 + known_len / chunk * 0.01, 1.0)
            ctx.row("E", f"{name}: {method}", estimate, partial(_prefill_row, ctx, run, known, method, chunk))
        del run


def _prefill_row(ctx: Context, run: SliceRun, known: torch.Tensor, method: str, chunk: int) -> None:
    prior, cond = run.prior, run.cond
    known_len = known.shape[1]

    def window() -> None:
        state = prior.start(cond)
        for first in range(0, known_len, chunk):
            prior.prefill(state, known[:, first : first + chunk], check_ids=False)  # as the engine does

    _reset_peak(ctx)
    slice_s = _seconds(ctx, window, repeats=1 if chunk < known_len else 2)
    full_s = slice_s * run.depth / run.layers
    ctx.emit(
        "E",
        "prefill",
        prior=run.spec.name,
        method=method,
        chunk=chunk,
        known_tokens=known_len,
        calls=-(-known_len // chunk),
        slice_s_per_window=slice_s,
        s_per_window=full_s,
        levels=list(run.spec.levels),
        s_per_min={level: full_s / known_len * PREFILL_TOKENS_PER_MINUTE[level] for level in run.spec.levels},
        peak_memory_gb=_peak_gb(ctx),
        note="compute-bound: the H100 figure is taken as measured (same matrix rate as an H200)"
        + (
            "; start() feeds the lyric prefix first, so the music goes through the chunk path"
            if prior.config.single_enc_dec
            else ""
        ),
    )


# ---- F


def _windows_per_minute(config_level: int, new_tokens: int) -> float:
    return STEPS_PER_MINUTE[config_level] / new_tokens


def conditioner(ctx: Context) -> None:
    spec = PRIORS["upsampler"]
    run = SliceRun.build(ctx, spec)
    prior, config = run.prior, run.prior.config
    assert config.cond_downsample is not None
    labels = [0, 0, config.sample_length, 0, 0] + [-1] * (config.max_bow_genre_size - 1)
    y = torch.tensor([labels] * BATCH, dtype=torch.int64, device=ctx.device)
    z_cond = torch.randint(
        0, config.l_bins, (BATCH, config.n_ctx // config.cond_downsample), device=ctx.device
    )
    _reset_peak(ctx)
    seconds = _seconds(ctx, lambda: prior.get_conditioning(y, z_cond), repeats=3)
    _, new = window_tokens(config)
    ctx.emit(
        "F",
        "conditioner",
        prior="upsampler",
        s_per_window=seconds,
        s_per_min={level: seconds * _windows_per_minute(level, new) for level in spec.levels},
        peak_memory_gb=_peak_gb(ctx),
    )


def lyric_encoder(ctx: Context) -> None:
    spec = PRIORS["5b_lyrics"]
    run = SliceRun.build(ctx, spec)
    prior, config = run.prior, run.prior.config
    lyrics = torch.randint(0, config.n_vocab, (BATCH, config.n_tokens), device=ctx.device)
    cross = next(b.attn for b in prior.prior.transformer._blocks if b.attn.attn_func == CROSS)
    cross_layers = attn_funcs(prior_config(spec, ctx.dry_run)).count(CROSS)

    def encode() -> None:
        with torch.no_grad():
            states = prior.encode_lyrics(lyrics)
            for _ in range(cross_layers):
                cross.encoder_kv(states)

    seconds = _seconds(ctx, encode, repeats=3)
    _, new = window_tokens(config)
    ctx.emit(
        "F",
        "lyric_encoder",
        prior="5b_lyrics",
        cross_layers=cross_layers,
        s_per_window=seconds,
        s_per_min={2: seconds * _windows_per_minute(2, new)},
    )


def vqvae_decode(ctx: Context) -> None:
    seconds_of_audio = 0.1 if ctx.dry_run else 60.0
    vqvae = build_vqvae(device=ctx.device)
    hop = vqvae.hop_lengths[0]
    codes = torch.randint(
        0, vqvae.config.l_bins, (BATCH, int(seconds_of_audio * SAMPLE_RATE) // hop), device=ctx.device
    )
    _reset_peak(ctx)
    seconds = _seconds(ctx, lambda: vqvae.decode(codes, 0), repeats=1)
    ctx.emit(
        "F",
        "vqvae_decode",
        level=0,
        samples=BATCH,
        seconds_of_audio=seconds_of_audio,
        seconds=seconds,
        peak_memory_gb=_peak_gb(ctx),
    )


# ---- G


def overlap(ctx: Context) -> None:
    """Levels 1 and 0 at once: two captured graphs, alone and interleaved on two streams."""
    spec = PRIORS["upsampler"]
    per_call, replays = 16, (2 if ctx.dry_run else 8)
    runs = [SliceRun.build(ctx, spec, level=level) for level in spec.levels]
    steppers: list[StaticStepper] = []
    for index, run in enumerate(runs):
        plan = ctx.window_plan(run.prior.config)
        total = 1 + (3 + replays) * per_call
        state = prefilled(run.prior, run.cond, run.known, plan.first + total + per_call)
        uniforms = window_uniforms(BATCH, total, ctx.device, seed=20 + index)
        stepper = StaticStepper(run.prior, state, uniforms, per_call=per_call, capture=ctx.capture)
        steppers.append(stepper)
    try:
        with torch.inference_mode():
            snapshots = [[t.clone() for t in s.buffers()] for s in steppers]
        positions = [(s.state.cache.pos, s.done) for s in steppers]

        def restore() -> None:
            ctx.sync()
            with torch.inference_mode():
                for stepper, saved, (pos, done) in zip(steppers, snapshots, positions, strict=True):
                    for buffer, value in zip(stepper.buffers(), saved, strict=True):
                        buffer.copy_(value)
                    # the host's position too: uncaptured calls move it on (and check the room)
                    stepper.state.cache.restart()
                    stepper.state.cache.moved_on_device(pos)
                    stepper.done = done
            ctx.sync()

        streams = [torch.cuda.Stream() if ctx.cuda else None for _ in steppers]

        def interleaved(rounds: int) -> None:
            for stream in streams:
                if stream is not None:
                    stream.wait_stream(torch.cuda.current_stream())
            for _ in range(rounds):
                for stepper, stream in zip(steppers, streams, strict=True):
                    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                        stepper.advance()

        # each graph's first replay (and the side streams' first use) before anything is timed
        for stepper in steppers:
            stepper.advance()
        interleaved(1)
        alone_s, alone_tokens = [], []
        for stepper in steppers:
            restore()
            start = time.perf_counter()
            for _ in range(replays):
                stepper.advance()
            ctx.sync()
            alone_s.append(time.perf_counter() - start)
            alone_tokens.append(stepper.tokens.clone())
        restore()
        start = time.perf_counter()
        interleaved(replays)
        ctx.sync()
        together = time.perf_counter() - start
        steps = replays * per_call
        same = [torch.equal(a, s.tokens) for a, s in zip(alone_tokens, steppers, strict=True)]
        ctx.emit(
            "G",
            "overlap",
            levels=list(spec.levels),
            captured=ctx.capture,
            steps=steps,
            alone_steps_per_s=[steps / s for s in alone_s],
            together_steps_per_s_each=steps / together,
            speedup_vs_sequential=sum(alone_s) / together,
            tokens_equal_sequential=all(same),
        )
        ctx.emit(
            "H",
            "check",
            check="overlapped vs sequential tokens",
            prior="upsampler",
            dtype=ctx.dtype,
            captured=ctx.capture,
            tokens_equal=int(sum(same)),
            steps=len(same),
            first_mismatch=None if all(same) else same.index(False),
            note="counts are levels whose tokens all match",
        )
    finally:
        for stepper in steppers:
            stepper.close()
