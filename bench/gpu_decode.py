"""Sections C, D and H of `bench/gpu.py`: decode speed per path, the costliest kernels, correctness.

C times each decode path on a prior's layer slice at batch 3, mid-window (a warm-up segment, then
the median of the timed segments), and the same path with the layers skipped (the embedding, head
and draw: "extras"). The full-depth step is

    ms = extras + (slice − extras) × depth / slice layers

    + (full layers' bytes − slice layers' bytes × depth / slice layers) / read bandwidth

(the last term, `composition_ms`, is zero where the slice's layers are the prior's average mix, as
at the upsampler; 1b_lyrics' slice holds its one dense layer and a prime layer in 17, so it streams
more per layer than the whole prior), and it is split into streaming and fixed parts
(`gpu_facts.FORMULA`) for the H100 projection.
"""

from __future__ import annotations

import contextlib
import dataclasses
from functools import partial
from typing import Any

import torch
from torch import Tensor

from bench.gpu_context import Context
from bench.gpu_facts import BATCH, FORMULA, STEPS_PER_MINUTE
from bench.gpu_kernels import Tile, fastest_tile, layer_shapes
from bench.gpu_models import (
    PRIORS,
    PriorSpec,
    attn_funcs,
    build_prior,
    full_depth,
    prior_config,
    random_conditioning,
    random_ids,
    step_bytes,
)
from bench.gpu_paths import (
    PATHS,
    DecodePath,
    StaticStepper,
    inverse_cdf,
    layers_skipped,
    prefilled,
    require_kernels,
    require_path,
    reset_compiled,
    window_uniforms,
)
from bench.gpu_summary import PDL_PATH, TRITON_PATH, fused_attention, latest
from bench.gpu_timing import Timing, time_path
from sampler.jukebox.prior import Conditioning, JukeboxPrior

EAGER_AND_GRAPH = tuple(path for path in PATHS if path.compile_mode is None and path.kernels == "torch")
COMPILED = tuple(path for path in PATHS if path.compile_mode is not None)
TRITON = tuple(path for path in PATHS if path.kernels == "triton" and not path.tuned)
TUNED = tuple(path for path in PATHS if path.tuned)  # after B's tiles: the tile is chosen from them
CHECK_STEPS = 64
BUILD_S = (5.0, 0.5)  # a slice's build: seconds on the GPU, in a dry run
# Inductor's seconds per layer of a whole-slice graph (a guess: a block graph's ~35 s spread over the
# ops it fuses; the row records what it took)
COMPILE_S_PER_SLICE_LAYER = 20
GRAPH_K16 = next(path for path in PATHS if path.name == "graph K=16")


@dataclasses.dataclass
class SliceRun:
    """One prior's slice, built once for all of its rows."""

    spec: PriorSpec
    prior: JukeboxPrior
    cond: Conditioning
    known: Tensor
    depth: int

    @classmethod
    def build(
        cls,
        ctx: Context,
        spec: PriorSpec,
        layers: range | None = None,
        dtype: torch.dtype | None = None,
        level: int | None = None,
    ) -> SliceRun:
        layers = spec.layers if layers is None else layers
        prior = build_prior(
            spec, dry_run=ctx.dry_run, device=ctx.device, dtype=dtype or ctx.dtype, layers=layers, level=level
        )
        plan = ctx.window_plan(prior.config)
        cond = random_conditioning(prior, BATCH, ctx.device)
        return cls(
            spec, prior, cond, random_ids(prior, BATCH, plan.first, ctx.device), full_depth(spec, ctx.dry_run)
        )

    @property
    def layers(self) -> int:
        return self.prior.config.prior_depth

    def time(
        self, ctx: Context, path: DecodePath, profile: bool, shapes: bool = False, engine: bool = True
    ) -> Timing:
        """`path` timed on the slice, through the engine where it has the path (engine=False: the
        bench's own)."""
        return time_path(
            path,
            self.prior,
            self.cond,
            self.known,
            ctx.window_plan(self.prior.config),
            engine=ctx.engine if engine else None,
            capture=ctx.capture,
            compile_backend=ctx.compile_backend,
            profile=profile,
            shapes=shapes,
        )


def layer_bytes(detail: dict[str, int]) -> int:
    """The bytes of `step_bytes` that its layers stream (not the head)."""
    return detail["weights"] + detail["kv"]


def _kernels_per_step(timing: Timing) -> float | None:
    tally = timing.profile
    return None if tally is None or not tally.events else tally.events / tally.steps


def extras_of(ctx: Context, run: SliceRun, path: DecodePath, engine: str) -> dict[str, Any]:
    """The embedding, head and draw of `path`'s family, measured once per prior and `engine` (the one
    that ran the row: the engine's step and the bench's differ outside the layers too)."""
    key = (run.spec.name, path.extras_family, engine)
    if key not in ctx.extras:
        family = next(p for p in PATHS if p.name == path.extras_family)
        with layers_skipped(run.prior):
            timing = run.time(ctx, family, profile=True, engine=engine != "bench")
        ctx.extras[key] = dict(
            ms_per_step=timing.ms_per_step, kernels_per_step=_kernels_per_step(timing), engine=timing.engine
        )
        ctx.emit(
            "C",
            "extras",
            prior=run.spec.name,
            family=family.name,
            engine_error=timing.engine_error,
            **ctx.extras[key],
        )
    return ctx.extras[key]


def decode_row(ctx: Context, run: SliceRun, path: DecodePath, scale_check: bool = False) -> dict[str, Any]:
    """One row of C: time `path` on the slice, scale to full depth, split, project."""
    timing = run.time(ctx, path, profile=True, shapes=path.name == "static" and not scale_check)
    if path.compile_mode is not None and not timing.compiled_graphs:  # each prior's compiled rows start cold
        raise RuntimeError(f"{path.name} compiled no graph: its figure would be the eager step's")
    if timing.profile is not None and not scale_check:
        ctx.profiles[(run.spec.name, path.name)] = timing.profile
    extras = extras_of(ctx, run, path, timing.engine)
    layers, depth = run.layers, run.depth
    per_layer_ms = (timing.ms_per_step - extras["ms_per_step"]) / layers
    config = prior_config(run.spec, ctx.dry_run)
    static = path.kind != "sliced"
    detail = step_bytes(config, attn_funcs(config), ctx.dtype, BATCH, static=static)
    measured = step_bytes(config, attn_funcs(run.prior.config), ctx.dtype, BATCH, static=static)
    composition_bytes = layer_bytes(detail) - layer_bytes(measured) * depth / layers
    composition_ms = ctx.split(0.0, round(composition_bytes)).streaming_ms  # at the split's bandwidth
    full_ms = extras["ms_per_step"] + per_layer_ms * depth + composition_ms
    split = ctx.split(full_ms, detail["total"])
    kernels = _kernels_per_step(timing)
    kernels_per_layer = None
    if kernels is not None and extras["kernels_per_step"] is not None:
        kernels_per_layer = (kernels - extras["kernels_per_step"]) / layers
    busy = None
    if timing.profile is not None and timing.profile.events:
        busy = timing.profile.event_us / timing.profile.steps / 1e3 / timing.ms_per_step
    bins = run.prior.bins
    levels = run.spec.levels
    return ctx.emit(
        "C",
        "scale_check" if scale_check else "decode",
        prior=run.spec.name,
        path=path.name,
        engine=timing.engine,
        engine_error=timing.engine_error,
        profile_error=timing.profile_error,
        layers_measured=layers,
        depth=depth,
        slice_ms_per_step=timing.ms_per_step,
        extras_ms_per_step=extras["ms_per_step"],
        extras_engine=extras["engine"],
        per_layer_ms=per_layer_ms,
        composition_ms=composition_ms,
        **split.as_record(),
        bytes_detail=detail,
        levels=list(levels),
        s_per_min={level: full_ms / 1e3 * STEPS_PER_MINUTE[level] for level in levels},
        h100_s_per_min={level: split.h100_ms / 1e3 * STEPS_PER_MINUTE[level] for level in levels},
        x_bound_here=full_ms / (detail["total"] / ctx.bound_bandwidth() * 1e3),
        kernels_per_step_slice=kernels,
        kernels_per_layer=kernels_per_layer,
        kernels_per_step_full=None
        if kernels_per_layer is None
        else extras["kernels_per_step"] + kernels_per_layer * depth,
        busy_fraction=busy,
        setup_s=timing.setup_s,
        first_segment_ms=timing.first_segment_ms,
        compiled_graphs=timing.compiled_graphs,
        peak_memory_gb=None if timing.peak_bytes is None else timing.peak_bytes / 1e9,
        segments_ms=timing.segments_ms,
        tokens_in_range=bool(((timing.tokens >= 0) & (timing.tokens < bins)).all()),
        formula="ms = extras + (slice - extras) x depth / layers + composition; " + FORMULA,
    )


def decode_paths(ctx: Context, names: tuple[str, ...], paths: tuple[DecodePath, ...]) -> None:
    """Rows of C for the priors `names` and the given paths; each row on its own guard."""
    for name in names:
        spec = PRIORS[name]
        if any(path.compile_mode is not None for path in paths):
            reset_compiled()
        run = ctx.build(
            "C", f"{name}: build the slice", ctx.seconds(*BUILD_S), partial(SliceRun.build, ctx, spec)
        )
        if run is None:
            continue
        for path in paths:
            tile, why = launch_tile(ctx, run, path)
            if why is not None:
                ctx.recorder.skip("C", f"{name}: {path.name}", why)
                continue
            ctx.row(
                "C",
                f"{name}: {path.name}",
                row_estimate(ctx, spec, path),
                partial(_decode_and_check, ctx, run, path, tile),
            )
        del run


def launch_tile(ctx: Context, run: SliceRun, path: DecodePath) -> tuple[Tile | None, str | None]:
    """The `linear` tile `path` launches with (None: the kernels' own settings), or why it cannot run
    here: PDL on a GPU without it, or no tile that B timed at every shape of the prior's layer. The
    tuned path also takes PDL where C's rows found it faster, and one attention launch where B's
    attention rows did for this prior."""
    if path.kernels == "torch":
        return None, None
    from sampler.jukebox import kernels

    pdl_capable = kernels.pdl_capable(ctx.device)
    if path.pdl and not pdl_capable:
        return None, "programmatic dependent launch needs compiled Triton on a GPU of compute capability 9.0+"
    if not path.tuned:
        return (dataclasses.replace(Tile.default(), pdl=True) if path.pdl else None), None
    shapes = layer_shapes(run.prior)
    choice = fastest_tile(ctx.recorder.records, shapes, ctx.dtype)
    if choice is None:
        return None, f"bench B timed no tile at every linear shape of this layer ({shapes}) in {ctx.dtype}"
    name = run.spec.name
    with_pdl = latest(ctx.recorder.records, "decode", prior=name, path=PDL_PATH)
    without = latest(ctx.recorder.records, "decode", prior=name, path=TRITON_PATH)
    pdl = bool(
        pdl_capable
        and with_pdl is not None
        and without is not None
        and float(with_pdl["slice_ms_per_step"]) < float(without["slice_ms_per_step"])
    )
    fused = fused_attention(ctx.recorder.records, name)  # B's attention rows: one launch where it pays
    tile = dataclasses.replace(choice.tile, pdl=pdl, fused_attend_keys=0 if fused is None else fused.setting)
    ctx.emit(
        "C",
        "tuned_tile",
        prior=name,
        **tile.fields(),
        layer_shapes=shapes,
        linear_us_per_layer=choice.layer_us,
        default_linear_us_per_layer=choice.default_layer_us,
    )
    return tile, None


def _decode_and_check(ctx: Context, run: SliceRun, path: DecodePath, tile: Tile | None) -> None:
    # the tile (and PDL) the path launches with: captured with it, replayed within
    with tile.chosen() if tile is not None else contextlib.nullcontext():
        decode_row(ctx, run, path)
        if path.compile_mode is not None:
            graph_checks(ctx, run, path)
        if path.kernels != "torch":
            kernel_checks(ctx, run, path)


def row_estimate(ctx: Context, spec: PriorSpec, path: DecodePath) -> float:
    """Seconds a row should take: per-block compiles cost per attention kind in the slice (one graph
    each), a whole-slice compile per layer (one graph of them all)."""
    if path.kernels != "torch":  # Triton builds each kernel once; the interpreter is slow
        return ctx.seconds(45, 30)
    if path.compile_mode is None:
        return ctx.seconds(8, 1.5)
    if path.compile_scope == "slice":
        layers = len(spec.layers)
        return ctx.seconds(15 + COMPILE_S_PER_SLICE_LAYER * layers, 1.0 * layers)
    kinds = len(set(attn_funcs(prior_config(spec, ctx.dry_run, spec.layers))))
    per_kind = 150 if path.compile_mode.startswith("max-autotune") else 35
    return ctx.seconds(15 + per_kind * kinds, 2.0 * kinds)


def scale_check(ctx: Context) -> None:
    """The upsampler at its full depth against the slice scaled to it: how far the scaling holds."""
    spec = PRIORS["upsampler"]
    run = SliceRun.build(ctx, spec, layers=range(full_depth(spec, ctx.dry_run)))
    names = ("static",) if ctx.dry_run else ("static", "graph K=16")  # a dry run: the code path, once
    for path in (p for p in PATHS if p.name in names):
        ctx.row(
            "C",
            f"upsampler full depth: {path.name}",
            ctx.seconds(6, 2),
            partial(_scale_row, ctx, run, path),
        )


def _scale_row(ctx: Context, run: SliceRun, path: DecodePath) -> None:
    measured = decode_row(ctx, run, path, scale_check=True)
    scaled = next(
        (
            r
            for r in ctx.recorder.records
            if r["kind"] == "decode" and r.get("prior") == "upsampler" and r.get("path") == path.name
        ),
        None,
    )
    if scaled is not None:
        ctx.emit(
            "C",
            "scale_check_result",
            prior="upsampler",
            path=path.name,
            measured_full_ms=measured["ms_per_step"],
            scaled_from_slice_ms=scaled["ms_per_step"],
            ratio=scaled["ms_per_step"] / measured["ms_per_step"],
        )


# ---- D


def costliest(ctx: Context) -> None:
    """The ten costliest kernels per step of the best path measured, per prior (CPU: operators), with
    bytes per µs where the eager static profile knows the inputs of the operator that launched them
    (a graph replay has no operators)."""
    decode = [r for r in ctx.recorder.records if r["kind"] == "decode"]
    for name in PRIORS:
        rows = [r for r in decode if r["prior"] == name and (name, r["path"]) in ctx.profiles]
        if not rows:
            ctx.recorder.skip("D", name, "no profiled decode row for this prior")
            continue
        best = min(rows, key=lambda r: r["slice_ms_per_step"])
        tally = ctx.profiles[(name, best["path"])]
        static = ctx.profiles.get((name, "static"))
        layers = best["layers_measured"]
        top = []
        for kernel, (count, us, _) in sorted(tally.by_name.items(), key=lambda item: -item[1][1])[:10]:
            per_call_us = us / count
            known = static.by_name.get(kernel) if static is not None else None
            per_call_bytes = known[2] / known[0] if known and known[2] else None
            top.append(
                dict(
                    name=kernel[:160],
                    per_step=count / tally.steps,
                    us_per_step=us / tally.steps,
                    us_per_layer=us / tally.steps / layers,
                    us_per_call=per_call_us,
                    input_bytes_per_call=per_call_bytes,
                    bytes_per_us=None if per_call_bytes is None else per_call_bytes / per_call_us,
                )
            )
        ctx.emit(
            "D",
            "kernels",
            prior=name,
            path=best["path"],
            layers_measured=layers,
            unit=("kernels" if ctx.cuda else "CPU operators")
            + " per step of the slice; bytes: inputs of the launching operator (eager static profile)",
            bytes_linked_fraction=None if static is None else static.bytes_linked_fraction,
            top=top,
        )


# ---- H


def run_steps(
    prior: JukeboxPrior, state: Any, uniforms: Tensor, force: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Eager steps with the given uniforms: (tokens fed (N, T), own draws (N, T), logits (T, N, bins)).
    `force` feeds those tokens instead of the draws (teacher forcing), so logits stay comparable."""
    fed, drawn, logits = [], [], []
    token = None
    with torch.inference_mode():
        for t in range(uniforms.shape[0]):
            out = prior.step_in_inference_mode(state, token, check_ids=False)
            own = inverse_cdf(out, uniforms[t])
            token = own if force is None else force[:, t]
            fed.append(token)
            drawn.append(own)
            logits.append(out.clone())
    return torch.stack(fed, 1), torch.stack(drawn, 1), torch.stack(logits)


def emit_check(ctx: Context, run: SliceRun, check: str, want: Tensor, got: Tensor, **fields: Any) -> None:
    """One H record: `check` on `run`'s prior, how far the tokens `got` agree with `want`, and `fields`."""
    ctx.emit("H", "check", check=check, prior=run.spec.name, **fields, **_agreement(want, got))


def _agreement(a: Tensor, b: Tensor) -> dict[str, Any]:
    same = (a == b).all(dim=0)
    mismatched = (~same).nonzero()
    return dict(
        tokens_equal=int(same.sum()),
        steps=same.numel(),
        first_mismatch=None if mismatched.numel() == 0 else int(mismatched[0, 0]),
    )


def static_vs_sliced(ctx: Context, run: SliceRun, dtype: torch.dtype) -> None:
    prior, cond, known = run.prior, run.cond, run.known
    steps = CHECK_STEPS // (4 if ctx.dry_run else 1)
    uniforms = window_uniforms(BATCH, steps, ctx.device, seed=7)
    prior.set_static_decode(False)
    sliced, _, sliced_logits = run_steps(
        prior, prefilled(prior, cond, known, known.shape[1] + steps), uniforms
    )
    prior.set_static_decode(True)
    try:
        state = prefilled(prior, cond, known, known.shape[1] + steps)
        _, drawn, static_logits = run_steps(prior, state, uniforms, force=sliced)
    finally:
        prior.set_static_decode(False)
    emit_check(
        ctx,
        run,
        "static vs sliced (teacher-forced, same uniforms)",
        sliced,
        drawn,
        dtype=dtype,
        max_logit_diff=float((sliced_logits - static_logits).abs().max()),
    )


def stepper_run(
    ctx: Context,
    run: SliceRun,
    steps: int,
    *,
    capture: bool,
    compile_mode: str | None = None,
    compile_scope: str = "block",
    per_call: int = 16,
) -> tuple[Tensor, Tensor]:
    """Tokens (N, T) and logits (T, N, bins) of the bench's stepper over `steps` calls' worth of tokens."""
    prior, cond, known = run.prior, run.cond, run.known
    total = 1 + steps
    state = prefilled(prior, cond, known, known.shape[1] + total + 2 * per_call)
    uniforms = window_uniforms(BATCH, total, ctx.device, seed=11)
    stepper = StaticStepper(
        prior,
        state,
        uniforms,
        per_call=per_call,
        capture=capture,
        compile_mode=compile_mode,
        compile_scope=compile_scope,
        compile_backend=ctx.compile_backend,
        keep_logits=True,
    )
    try:
        while stepper.done + per_call <= total:
            stepper.advance()
        ctx.sync()
        return stepper.tokens.clone(), stepper.logits.clone() if stepper.logits is not None else torch.empty(
            0
        )
    finally:
        stepper.close()


def graph_checks(ctx: Context, run: SliceRun, path: DecodePath = GRAPH_K16) -> None:
    """`path` (captured, K tokens a call) against the same calls run eagerly without compiling, and
    twice against itself."""
    steps = CHECK_STEPS if not ctx.dry_run else 32
    label, per_call = path.name, path.per_call
    eager_tokens, eager_logits = stepper_run(ctx, run, steps, capture=False, per_call=per_call)
    compiled: dict[str, Any] = dict(
        compile_mode=path.compile_mode, compile_scope=path.compile_scope, per_call=per_call
    )
    tokens, logits = stepper_run(ctx, run, steps, capture=ctx.capture, **compiled)
    again, again_logits = stepper_run(ctx, run, steps, capture=ctx.capture, **compiled)
    outcomes = (
        (
            "vs eager static (same uniforms)",
            eager_tokens,
            tokens,
            dict(max_logit_diff=float((eager_logits - logits).abs().max())),
        ),
        (
            "two runs bitwise equal",
            tokens,
            again,
            dict(logits_bitwise_equal=bool(torch.equal(logits, again_logits))),
        ),
    )
    for what, want, got, logit_fields in outcomes:
        emit_check(
            ctx, run, f"{label}: {what}", want, got, dtype=ctx.dtype, captured=ctx.capture, **logit_fields
        )


def engine_window(ctx: Context, run: SliceRun, steps: int, **options: Any) -> Tensor:
    """Tokens (N, steps) of one window through the engine's decoder with `options`, seed fixed."""
    assert ctx.engine is not None
    decoder = ctx.engine.WindowDecoder(run.prior, BATCH, ctx.engine.DecodeOptions(**options))
    require_kernels(decoder, options.get("kernels", "torch"))
    generator = torch.Generator(device=ctx.device).manual_seed(13)
    try:
        tokens = decoder.sample_window(run.cond, run.known, steps, 1.0, 0, 0.0, generator)
    finally:
        run.prior.set_static_decode(False)
    require_path(decoder, options.get("path", "static"), ctx.capture)  # it captures in its first call
    return tokens


def kernel_checks(ctx: Context, run: SliceRun, path: DecodePath) -> None:
    """The engine's `path` (its own kernels) against its eager torch static step on the same window
    and draws, and twice against itself (fixed-order sums: the same tokens every run)."""
    room = run.prior.config.n_ctx - run.known.shape[1]
    steps = min(room, CHECK_STEPS if not ctx.dry_run else 8)
    eager = engine_window(ctx, run, steps, path="static", tokens_per_call=path.per_call)
    chosen = dict(path=path.kind, tokens_per_call=path.per_call, kernels=path.kernels)
    tokens = engine_window(ctx, run, steps, **chosen)
    again = engine_window(ctx, run, steps, **chosen)
    for what, want, got in (("vs the engine's eager torch step", eager, tokens), ("two runs", tokens, again)):
        emit_check(ctx, run, f"{path.name}: {what}", want, got, dtype=ctx.dtype)


def correctness(ctx: Context) -> None:
    """H for each prior: static vs sliced in fp32 and in the compute dtype, then the graph checks."""
    for name, spec in PRIORS.items():
        run = ctx.build(
            "H",
            f"{name}: build the slice",
            ctx.seconds(5, 0.5),
            partial(SliceRun.build, ctx, spec, dtype=torch.float32),
        )
        if run is None:
            continue
        ctx.row(
            "H",
            f"{name}: static vs sliced fp32",
            ctx.seconds(4, 1),
            partial(static_vs_sliced, ctx, run, torch.float32),
        )
        if ctx.dtype != torch.float32:
            run.prior.to_compute_dtype(ctx.dtype)
            ctx.row(
                "H",
                f"{name}: static vs sliced {ctx.dtype}",
                ctx.seconds(4, 1),
                partial(static_vs_sliced, ctx, run, ctx.dtype),
            )
        ctx.row("H", f"{name}: graph checks", ctx.seconds(6, 1.5), partial(graph_checks, ctx, run))
        del run
