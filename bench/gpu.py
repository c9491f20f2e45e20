"""The sampling engine on a GPU: the figures GPU-PLAN.md §5 asks of one ≤ 10-minute run.

Sections, run in order of value (a part that will not fit the budget is skipped with a reason):

    A  device, versions, measured copy and read bandwidth
    B  constants: host µs per eager op, µs per kernel in a CUDA graph, LayerNorm, M ≤ 16 GEMMs
    C  decode ms/step per prior and path at batch 3, fp16, mid-window: kernels, busy fraction,
       s/min, × bound, the streaming/fixed split and the H100 projection, setup s, peak memory
    H  correctness: static vs sliced logits and tokens, graph vs eager, two runs equal
    C  the upsampler's Triton blocks and its compiled blocks (GPU-PLAN §4 step 6's decision)
    B  the Triton linear tiles, then C again at the fastest tile
    E  prefill of one window per prior: the reference's chunks vs one pass
    G  two upsampler graphs on two streams (levels 1 and 0 at once)
    F  per-window extras: conditioner, lyric encoder + cross k/v, VQ-VAE decode of 3 × 60 s
    C  the upsampler at full depth (checks the slice scaling)
    D  the ten costliest kernels of the best path per prior (again after the last rows)
    B  the Triton attention kernel per attention kind
    C  the other priors compiled and in Triton, then the whole slice as one graph (the risk: minutes
       of compiling on a fresh machine)
    I  the summary table (also rewritten to --out after every part, so a time-out leaves one)

Random weights at the published sizes; the decode and prefill rows run on layer slices scaled to
full depth (`gpu_models`). Every figure is a JSON line on stdout and in `--out DIR/gpu.jsonl`,
flushed as it is measured; the summary table is printed last and written to `DIR/summary.txt`.

    python -m bench.gpu --budget 540 --out $OUT        # on the GPU machine
    python -m bench.gpu --dry-run                       # CPU, tiny sizes, every section but capture
    python -m bench.gpu --dry-run --device cuda --budget 120   # a GPU smoke test, with capture
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import bench.gpu_imports  # noqa: F401  (before the sampler: the GPU image lacks unidecode)
from bench.gpu_context import Context
from bench.gpu_decode import (
    COMPILED,
    EAGER_AND_GRAPH,
    TRITON,
    TUNED,
    correctness,
    costliest,
    decode_paths,
    scale_check,
)
from bench.gpu_kernels import FIRST_SHAPE_S, triton_attention, triton_linear_tiles
from bench.gpu_micro import bandwidth, environment, gemms, launch_costs, layernorm
from bench.gpu_models import PRIORS
from bench.gpu_paths import DecodePath, engine_module
from bench.gpu_record import SUMMARY_FILE, Budget, DeviceBroken, Recorder, run_part
from bench.gpu_summary import table
from bench.gpu_window import conditioner, lyric_encoder, overlap, prefill, vqvae_decode

SECTIONS = "ABCDEFGHI"


@dataclass(frozen=True)
class Part:
    """One budgeted unit of a section. Estimates are seconds at published sizes on the GPU and at dry-run
    sizes on the CPU; a part's rows check the budget again on their own."""

    section: str
    name: str
    gpu_s: float
    dry_s: float
    run: Callable[[Context], None]
    needs_inductor: bool = False
    needs_triton: bool = False
    decodes: tuple[str, tuple[DecodePath, ...]] | None = None  # C's prior and paths


BLOCKS, WHOLE_SLICE, MAX_AUTOTUNE = COMPILED


def _decode(
    name: str, prior: str, paths: tuple[DecodePath, ...], gpu_s: float, dry_s: float, **needs: bool
) -> Part:
    """A part of C: the paths' rows on the prior's slice. Its estimate must cover the slice's build and
    the first row, or it could start only to skip its row (tests/bench/test_gpu_bench.py checks)."""
    run = partial(decode_paths, names=(prior,), paths=paths)
    return Part("C", f"decode: {name}", gpu_s, dry_s, run, decodes=(prior, paths), **needs)


def triton_unavailable(ctx: Context) -> str | None:
    """Why the engine's Triton kernels cannot run here (None: they can)."""
    if ctx.engine is None:
        return "needs the sampling engine"
    try:
        from sampler.jukebox import kernels
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return kernels.unavailable(ctx.device)


PARTS = (
    Part("A", "environment", 15, 0.2, environment),
    Part("A", "bandwidth", 5, 0.5, bandwidth),
    Part("B", "launch costs", 5, 0.5, launch_costs),
    Part("B", "layernorm", 3, 0.3, layernorm),
    Part("B", "gemms", 15, 1, gemms),
    Part(
        "C",
        "decode: eager and graph paths",
        111,  # the sum of its rows' estimates: a part's estimate decides whether it starts
        2,
        lambda ctx: decode_paths(ctx, tuple(PRIORS), EAGER_AND_GRAPH),
    ),
    # The compiled blocks next: the engine's CUDA default, and no verdict without them (after the
    # correctness checks they would start too late in a 540 s run)
    _decode("compiled upsampler", "upsampler", (BLOCKS,), 125, 3),
    Part("H", "correctness", 57, 2, correctness),
    # GPU-PLAN §4 step 6 next: the upsampler's hand-fused blocks (with and without PDL; Triton compiles
    # in seconds), the linear tiles and attention forms, then the blocks again at the fastest of them,
    # before the totals' other inputs
    _decode("triton upsampler", "upsampler", TRITON, 95, 30, needs_triton=True),
    Part(
        "B", "triton linear tiles", FIRST_SHAPE_S[0], FIRST_SHAPE_S[1], triton_linear_tiles, needs_triton=True
    ),
    Part("B", "triton attention", 20, 10, triton_attention, needs_triton=True),
    _decode("triton upsampler at B's fastest tile", "upsampler", TUNED, 50, 30, needs_triton=True),
    Part("E", "prefill", 10, 1, prefill),
    Part("G", "overlap", 15, 1, overlap),
    Part("F", "conditioner", 5, 0.5, conditioner),
    Part("F", "lyric encoder", 5, 0.5, lyric_encoder),
    Part("F", "vqvae decode", 10, 1, vqvae_decode),
    Part("C", "decode: upsampler at full depth (scale check)", 15, 2, scale_check),
    Part("D", "costliest kernels (the paths so far)", 1, 0.1, costliest),
    _decode("compiled 5b_lyrics", "5b_lyrics", (BLOCKS,), 165, 4),
    _decode("triton 5b_lyrics", "5b_lyrics", TRITON + TUNED, 140, 40, needs_triton=True),
    # one graph of the whole slice: compile time grows with its layers (GPU-PLAN §4 step 5)
    _decode("whole-slice compiled upsampler", "upsampler", (WHOLE_SLICE,), 140, 6),
    _decode("compiled 1b_lyrics", "1b_lyrics", (BLOCKS,), 200, 5),
    _decode("whole-slice compiled 5b_lyrics", "5b_lyrics", (WHOLE_SLICE,), 220, 10),
    _decode("whole-slice compiled 1b_lyrics", "1b_lyrics", (WHOLE_SLICE,), 360, 17),
    _decode("max-autotune upsampler", "upsampler", (MAX_AUTOTUNE,), 480, 3, needs_inductor=True),
    Part("D", "costliest kernels (all paths)", 1, 0.1, costliest),
)


class LogRecords(logging.Handler):
    """The sampler's warnings (why the engine fell back from a compiled kernel, a graph, Triton) as
    records of the part that ran into them: in gpu.jsonl, where the run's figures are, not on a
    stderr that the run's time-out or a tail may lose."""

    def __init__(self, recorder: Recorder) -> None:
        super().__init__(logging.WARNING)
        self.recorder = recorder
        self.section = "A"

    def emit(self, record: logging.LogRecord) -> None:
        self.recorder.emit(
            self.section, "log", logger=record.name, level=record.levelname, message=record.getMessage()
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny sizes (CPU unless --device): checks the bench"
    )
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds for the whole run (default: no limit)"
    )
    parser.add_argument("--out", type=Path, default=None, help="folder for gpu.jsonl and summary.txt")
    parser.add_argument(
        "--sections",
        default=SECTIONS,
        help="letters to run, e.g. C,H or CH (default all; A and I always run: the others need A's figures)",
    )
    parser.add_argument("--device", default=None, help="cuda (default when there is one) or cpu")
    parser.add_argument(
        "--engine",
        choices=("auto", "bench"),
        default="auto",
        help="auto: decode rows through sampler.jukebox.decoding where it exists; bench: the bench's own",
    )
    parser.add_argument(
        "--compile-backend",
        default=None,
        help="torch.compile backend of the compiled rows (default: inductor; aot_eager in a dry run)",
    )
    parser.add_argument(
        "--inject-failure", default=None, metavar="SECTION", help=argparse.SUPPRESS
    )  # tests only
    args = parser.parse_args(argv)
    args.sections = set(args.sections.upper().replace(",", "").replace(" ", ""))
    unknown = args.sections - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}: choose from {', '.join(SECTIONS)}")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    if not args.dry_run and args.device != "cuda":
        parser.error("published sizes need a GPU: run on a CUDA machine, or pass --dry-run")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    recorder = Recorder(args.out)
    budget = Budget(args.budget, reserve=2.0 if args.dry_run else 15.0)
    engine, engine_error = engine_module() if args.engine == "auto" else (None, None)
    ctx = Context(
        recorder=recorder,
        budget=budget,
        device=device,
        dry_run=args.dry_run,
        engine=engine,
        compile_backend=args.compile_backend or ("aot_eager" if args.dry_run else "inductor"),
        inject_failure=args.inject_failure,
        engine_error=engine_error,
    )
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 checks stay fp32
    broken: str | None = None  # why the parts left cannot run (`DeviceBroken`)
    logs = LogRecords(recorder)
    sampler_log = logging.getLogger("sampler")
    sampler_log.addHandler(logs)
    try:
        for part in PARTS:
            logs.section = part.section
            if part.section not in args.sections and part.section != "A":  # A: what every other needs
                continue
            if broken is not None:
                recorder.skip(part.section, part.name, broken)
                continue
            if part.needs_inductor and ctx.compile_backend != "inductor":
                recorder.skip(
                    part.section, part.name, f"needs inductor; this run compiles with {ctx.compile_backend}"
                )
                continue
            why = triton_unavailable(ctx) if part.needs_triton else None
            if why is not None:
                recorder.skip(part.section, part.name, f"needs Triton kernels: {why}")
                continue
            try:
                run_part(
                    recorder,
                    budget,
                    part.section,
                    part.name,
                    ctx.seconds(part.gpu_s, part.dry_s),
                    partial(part.run, ctx),
                    inject_failure=part.section == (args.inject_failure or "").upper(),
                )
            except DeviceBroken as exc:
                broken = str(exc)
            recorder.write_text(SUMMARY_FILE, table(recorder.records)[1])
        rows, text = table(recorder.records)
        recorder.emit("I", "summary", rows=rows)
        recorder.write_text(SUMMARY_FILE, text)
        print(text, flush=True)
    finally:
        sampler_log.removeHandler(logs)
        recorder.close()


if __name__ == "__main__":
    main()
