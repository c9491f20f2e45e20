"""bench/gpu.py: the dry run end to end (as CI runs it), and the parts that need no run.

The bench runs once on a GPU that nobody here can reach, so these tests hold it to what that run
needs: every section leaves records or says why not, a failing section does not stop the others,
the budget skips instead of overrunning, and the arithmetic of the split and the scaling holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from bench.gpu_context import Context
from bench.gpu_decode import TUNED, SliceRun, decode_paths, launch_tile
from bench.gpu_facts import H100_BANDWIDTH, split_step
from bench.gpu_kernels import (
    DRY_RUN_TILES,
    TILES,
    Tile,
    fastest_tile,
    layer_shapes,
    triton_attention,
    triton_linear_tiles,
)
from bench.gpu_models import (
    PRIORS,
    attn_funcs,
    build_prior,
    prior_config,
    random_conditioning,
    random_ids,
    step_bytes,
)
from bench.gpu_paths import (
    ENGINE_MODULE,
    PATHS,
    StaticStepper,
    engine_adapter,
    inverse_cdf,
    prefilled,
    require_path,
    window_uniforms,
)
from bench.gpu_record import Budget, BudgetSpent, Recorder, alarm_held, run_part
from bench.gpu_summary import decision_lines, overlap_row
from bench.gpu_timing import WindowPlan, time_path
from sampler.jukebox import decoding
from sampler.jukebox.transformer import ATTN_NAMES, BLOCK, CROSS, DENSE, PREV_BLOCK, PRIME, TRANSPOSE, Conv1D

ROOT = Path(__file__).resolve().parents[2]
SECTIONS = "ABCDEFGHI"


def _dry_run(out: Path, *args: str) -> tuple[str, list[dict[str, Any]]]:
    # Without Triton's interpreter (tens of ms a launch) the Triton rows are skipped with their
    # reason; test_the_triton_row_goes_through_the_engines_kernels runs one.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--dry-run", "--out", str(out), *args],
        cwd=ROOT,
        env=env | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.stdout, records


@pytest.mark.slow
def test_dry_run_covers_every_section_and_goes_on_past_a_failing_one(tmp_path: Path) -> None:
    stdout, records = _dry_run(tmp_path, "--inject-failure", "F")
    on_disk = [json.loads(line) for line in (tmp_path / "gpu.jsonl").read_text().splitlines()]
    assert on_disk == records

    measured = {r["section"] for r in records if r["kind"] not in ("section", "skip", "error")}
    assert measured == set(SECTIONS) - {"F"}
    f_errors = [r for r in records if r["section"] == "F" and r["kind"] == "error"]
    assert len(f_errors) == 3 and all("injected" in r["error"] for r in f_errors)
    assert [r for r in records if r["kind"] == "error" and r["section"] != "F"] == []
    # the parts after F still ran: the scale check, the compiled rows, D
    assert [r["path"] for r in records if r["kind"] == "scale_check"] == ["static"]
    assert any(r["kind"] == "kernels" for r in records if r["t_s"] > f_errors[-1]["t_s"])

    decode = [r for r in records if r["kind"] == "decode"]
    runnable = [p.name for p in PATHS if "max-autotune blocks" not in p.name and p.kernels == "torch"]
    assert sorted((r["prior"], r["path"]) for r in decode) == sorted((p, n) for p in PRIORS for n in runnable)
    assert any(
        r["kind"] == "skip" and "max-autotune" in r["what"] and "inductor" in r["reason"] for r in records
    )
    triton_skips = [r for r in records if r["kind"] == "skip" and "triton" in r["what"]]
    assert [r["what"] for r in triton_skips] == [
        "decode: triton upsampler",
        "triton linear tiles",
        "triton attention",
        "decode: triton upsampler at B's fastest tile",
        "decode: triton 5b_lyrics",
    ]
    assert all("needs Triton kernels: " in r["reason"] for r in triton_skips)
    for r in decode:
        assert math.isclose(r["streaming_ms"] + r["fixed_ms"], r["ms_per_step"], rel_tol=1e-5, abs_tol=1e-6)
        h100 = r["bytes_per_step"] / (H100_BANDWIDTH * r["efficiency"]) * 1e3 + r["fixed_ms"]
        assert math.isclose(r["h100_ms_per_step"], h100, rel_tol=1e-5, abs_tol=1e-6)
        scaled = r["extras_ms_per_step"] + r["per_layer_ms"] * r["depth"] + r["composition_ms"]
        assert (r["composition_ms"] == 0) == (r["prior"] == "upsampler"), r  # its slice is its average
        # records keep 6 decimals: the per-layer figure's rounding is multiplied by the depth
        assert math.isclose(r["ms_per_step"], scaled, rel_tol=1e-5, abs_tol=1e-6 * (r["depth"] + 2))
        assert r["tokens_in_range"] and r["kernels_per_step_slice"] > 0
        assert r["extras_engine"] == r["engine"], r  # the layers less, the same step
    for r in (r for r in decode if "compiled blocks" in r["path"]):  # one graph per attention kind
        slice_config = prior_config(PRIORS[r["prior"]], True, PRIORS[r["prior"]].layers)
        assert r["compiled_graphs"] == len(set(attn_funcs(slice_config))), r
    whole = [r for r in decode if "whole-slice" in r["path"]]
    assert len(whole) == 3 and all(r["compiled_graphs"] == 1 for r in whole), whole

    checks = [r for r in records if r["kind"] == "check"]
    # H per prior, the two compiled rows' checks per prior, the overlap
    assert len(checks) == 3 * 3 + 3 * 2 * 2 + 1
    assert all(r["tokens_equal"] == r["steps"] for r in checks), checks
    assert all(r.get("max_logit_diff", 0.0) <= 1e-5 for r in checks)  # fp32 at 16-slot blocks: float rounding
    assert all(r["logits_bitwise_equal"] for r in checks if "logits_bitwise_equal" in r)

    summary = (tmp_path / "summary.txt").read_text()
    assert "5b_lyrics stack" in summary and "1b_lyrics stack" in summary
    assert stdout.rstrip().endswith(summary.rstrip())
    rows = next(r for r in records if r["kind"] == "summary")["rows"]
    complete = [row for row in rows if row["here"]["total"] is not None]
    assert len(complete) >= 2 * 6
    for row in complete:
        parts = [*row["here"]["levels"].values(), row["prefill"]]
        assert math.isclose(row["here"]["total"], sum(parts), rel_tol=1e-5)


def test_every_decode_part_has_time_for_its_slice_and_first_row_and_the_decision_comes_early() -> None:
    """A part whose estimate is below its slice's build plus its first row's estimate could start, build
    and then skip its only row; and the compiled upsampler (the verdict's baseline) must not wait behind
    the parts that only refine it."""
    from bench.gpu import PARTS
    from bench.gpu_decode import BUILD_S, row_estimate

    ctx = dataclasses.replace(_ctx(), dry_run=False)
    decodes = [part for part in PARTS if part.decodes is not None]
    assert len(decodes) == 10
    for part in decodes:
        assert part.decodes is not None
        prior, paths = part.decodes
        assert part.gpu_s >= BUILD_S[0] + row_estimate(ctx, PRIORS[prior], paths[0]), part.name
    names = [part.name for part in PARTS]
    assert names.index("decode: compiled upsampler") < names.index("triton linear tiles")


def test_every_part_expects_the_time_its_rows_expect_and_the_verdicts_baseline_comes_second() -> None:
    """A part's estimate decides whether it starts, and then it may take the whole budget left: one
    below its rows' sum starves the parts after it. In a 540 s run the compiled upsampler (no verdict
    without it) started too late behind the correctness checks and the Triton rows (review)."""
    from bench.gpu import PARTS
    from bench.gpu_decode import BUILD_S, EAGER_AND_GRAPH, row_estimate

    ctx = dataclasses.replace(_ctx(), dry_run=False)
    for part in PARTS:
        if part.decodes is not None:
            prior, paths = part.decodes
            rows = BUILD_S[0] + sum(row_estimate(ctx, PRIORS[prior], path) for path in paths)
            assert part.gpu_s >= rows, part.name
    eager = next(part for part in PARTS if part.name == "decode: eager and graph paths")
    rows = sum(
        BUILD_S[0] + sum(row_estimate(ctx, config, path) for path in EAGER_AND_GRAPH)
        for config in PRIORS.values()
    )
    assert eager.gpu_s >= rows
    names = [part.name for part in PARTS]
    assert names.index("decode: compiled upsampler") == names.index("decode: eager and graph paths") + 1


def test_a_device_that_fails_for_good_skips_the_parts_left_and_still_writes_the_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a sticky CUDA error even freeing memory fails: that escaped `main` with no summary."""
    from bench import gpu_record
    from bench.gpu import main

    calls = 0

    def release(collect: bool = True) -> None:
        nonlocal calls
        calls += 1
        if calls >= 2:
            raise gpu_record.DeviceBroken("the device failed for good: RuntimeError: illegal memory access")

    monkeypatch.setattr(gpu_record, "release_memory", release)
    main(["--dry-run", "--sections", "AB", "--out", str(tmp_path)])
    records = [json.loads(line) for line in (tmp_path / "gpu.jsonl").read_text().splitlines()]
    broken = [r for r in records if r["kind"] == "section" and r["status"] == "device broken"]
    assert len(broken) == 1
    later = [r for r in records if r["kind"] == "skip" and "failed for good" in r["reason"]]
    assert later and records[-1]["kind"] == "summary"
    assert (tmp_path / "summary.txt").exists()


def test_the_samplers_warnings_are_records_of_the_part_that_met_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why the engine fell back (a graph that did not capture, a kernel that did not build) was logged
    to a stderr the device run's tail and time-out lose; it is in gpu.jsonl now."""
    import logging

    from bench import gpu, gpu_micro

    def warned(ctx: Context) -> None:
        logging.getLogger("sampler.jukebox.decoding").warning("graph capture failed: sampling eagerly")
        gpu_micro.environment(ctx)

    parts = tuple(dataclasses.replace(p, run=warned) if p.name == "environment" else p for p in gpu.PARTS)
    monkeypatch.setattr(gpu, "PARTS", parts)
    gpu.main(["--dry-run", "--sections", "A", "--out", str(tmp_path)])
    records = [json.loads(line) for line in (tmp_path / "gpu.jsonl").read_text().splitlines()]
    logs = [r for r in records if r["kind"] == "log"]
    assert [(r["section"], r["logger"], r["message"]) for r in logs] == [
        ("A", "sampler.jukebox.decoding", "graph capture failed: sampling eagerly")
    ]


def test_a_budget_too_small_skips_every_part_with_a_reason(tmp_path: Path) -> None:
    stdout, records = _dry_run(tmp_path, "--budget", "0")
    parts = [r for r in records if r["kind"] == "section"]
    skips = [r for r in records if r["kind"] == "skip"]
    assert parts and all(r["status"] == "skipped" for r in parts)
    assert {r["what"] for r in skips} >= {r["part"] for r in parts}
    assert all(any(why in r["reason"] for why in ("budget", "inductor", "needs Triton")) for r in skips)
    assert not [r for r in records if r["kind"] not in ("section", "skip", "summary")]
    assert "5b_lyrics stack" in stdout and (tmp_path / "summary.txt").exists()


def test_sections_picks_what_runs_besides_a_and_i(tmp_path: Path) -> None:
    _, records = _dry_run(tmp_path, "--sections", "B")
    assert {r["section"] for r in records} == {"A", "B", "I"}
    assert any(r["kind"] == "gemm" for r in records)


# ---- without a run


def test_the_summary_reads_the_triton_decision_off_the_upsampler_rows() -> None:
    """Per-layer µs projected with each row's own H100 ratio; the best torch row against the 13 µs
    limit and against the Triton row; the fastest linear variant per shape."""

    def decode(path: str, per_layer_ms: float, h100_ratio: float) -> dict[str, Any]:
        return dict(
            kind="decode", prior="upsampler", path=path, per_layer_ms=per_layer_ms, ms_per_step=10.0,
            h100_ms_per_step=10.0 * h100_ratio,
        )  # fmt: skip

    def tile(block_n: int, dot: bool, us: float, default: bool = False) -> dict[str, Any]:
        return dict(
            kind="triton_linear", n_in=1920, n_out=1440, block_n=block_n, block_k=64, warps=4, dot=dot,
            tile=Tile(block_n, 64, 4, dot).name, us=us, default_tile=default, matches_torch=True,
        )  # fmt: skip

    records = [
        decode("sliced", 0.5, 1.0),  # not a graph path: not in the decision
        decode("graph K=16", 0.030, 1.0),
        decode("graph K=16 + compiled blocks", 0.016, 1.0),
        decode("graph K=16 + triton blocks", 0.010, 1.2),
        tile(32, False, 9.0, default=True),
        tile(32, True, 7.5),
        tile(16, False, 8.0),
    ]
    lines = decision_lines(records)
    assert lines[1].startswith("Decision (GPU-PLAN §4 step 6)") and "limit 13 µs" in lines[1]
    assert lines[2].split() == ["graph", "K=16", "30.0", "|", "30.0", "over"]
    assert lines[3].split()[-4:] == ["16.0", "|", "16.0", "over"]
    assert lines[4].split()[-3:] == ["10.0", "|", "12.0"]  # projected with its own ratio, within the limit
    assert lines[5] == (
        "  best torch blocks: graph K=16 + compiled blocks, 16.0 µs on an H100, over: hand-fused kernels wanted"
    )
    assert lines[6] == "  triton blocks: 1.33x the speed of the best torch blocks: kernels=triton on CUDA"
    assert lines[7] == "  triton linear 1920x1440: fastest 32x64w4 dot 7.5 µs (default 9.0 µs)"
    measured = [
        dict(kind="bandwidth", section="A", read_tb_s=4.0),
        dict(kind="env", section="A", sm_count=132),
        dict(kind="gemm", role="layer", m=3, n_in=1920, n_out=1440, dtype="torch.float16", us=11.0),
        dict(kind="gemm", role="layer", m=8, n_in=1920, n_out=1440, dtype="torch.float16", us=20.0),
        *records[:4],
        *(tile(n, dot, us, default) | dict(m=3, dtype="torch.float16", weight_tb_s=us / 10) for n, dot, us, default in
          ((32, False, 9.0, True), (16, True, 8.0, False))),
    ]  # fmt: skip
    assert decision_lines(measured)[7] == (
        "  triton linear 1920x1440: fastest 16x64w4 dot 8.0 µs, 0.80 TB/s = 20% of read bandwidth, "
        "90 programs on 132 SMs (default 9.0 µs; addmm 11.0 µs)"
    )
    split = Tile(32, 64, 4, False, split_k=2)
    split_row = tile(32, False, 6.0) | dict(
        m=3, dtype="torch.float16", weight_tb_s=0.6, split_k=2, programs=90
    )
    assert decision_lines([*measured, split_row | dict(tile=split.name)])[7] == (
        "  triton linear 1920x1440: fastest 32x64w4 split2 6.0 µs, 0.60 TB/s = 15% of read bandwidth, "
        "90 programs on 132 SMs (default 9.0 µs; addmm 11.0 µs)"
    )  # the programs the split launched, not the strips alone (45)
    wrong = [*records[:-1], tile(16, False, 1.0) | dict(matches_torch=False)]
    assert decision_lines(wrong)[7] == (
        "  triton linear 1920x1440: fastest 32x64w4 dot 7.5 µs (default 9.0 µs); WRONG results: 16x64w4"
    )
    slow_triton = [*records[:3], decode("graph K=16 + triton blocks", 0.020, 1.0)]
    assert decision_lines(slow_triton)[-1].endswith(
        "0.80x the speed of the best torch blocks: kernels=torch on CUDA"
    )
    with_pdl = [*records[:4], decode("graph K=16 + triton blocks + PDL", 0.008, 1.2)]
    lines = decision_lines(with_pdl)
    assert lines[5].split()[-3:] == ["8.0", "|", "9.6"]
    assert lines[7] == (
        "  triton blocks (with PDL): 1.67x the speed of the best torch blocks: kernels=triton on CUDA"
    )
    assert lines[8] == "  PDL: 1.25x the speed of the triton blocks without it: kernels.PDL=True"
    slow_pdl = [*records[:4], decode("graph K=16 + triton blocks + PDL", 0.011, 1.2)]
    assert decision_lines(slow_pdl)[-1] == (
        "  PDL: 0.91x the speed of the triton blocks without it: kernels.PDL=False"
    )
    tuned = dict(
        kind="tuned_tile", prior="upsampler", tile="16x256w8s5 split2", block_n=16, block_k=256, warps=8,
        stages=5, dot=False, split_k=2,
    )  # fmt: skip
    with_tuned = [*with_pdl, decode("graph K=16 + triton blocks, B's fastest tile", 0.006, 1.2), tuned]
    lines = decision_lines(with_tuned)
    assert lines[6].split()[-3:] == ["6.0", "|", "7.2"]
    assert lines[8] == (
        "  triton blocks (at B's fastest tile): 2.22x the speed of the best torch blocks: kernels=triton on CUDA"
    )
    assert lines[9].startswith("  PDL: 1.25x")
    assert lines[10] == (
        "  B's fastest tile 16x256w8s5 split2: LINEAR_BLOCK_N=16 LINEAR_BLOCK_K=256 LINEAR_WARPS=8 "
        "LINEAR_STAGES=5 LINEAR_DOT=False LINEAR_SPLIT_K=2 FUSED_ATTEND_KEYS=0, 1.33x the default tile's speed"
    )

    def attend(attention: str, stages: int, us: float) -> dict[str, Any]:
        return dict(kind="triton_attend", prior="upsampler", attention=attention, mix_stages=stages, us=us)

    timed = [
        attend("block", 3, 2.0),
        attend("block", 1, 3.0),
        attend("dense", 3, 4.0),
        attend("dense", 1, 6.0),
    ]
    assert decision_lines([*records, *timed, attend("cross", 1, 9.0)])[-1] == (
        "  attend, mix keys 3 stages deep: 1.50x the speed unpipelined over 2 kinds: kernels.MIX_STAGES=3"
    )
    slower = [attend("block", 3, 3.0), attend("block", 1, 2.0)]
    assert decision_lines([*records, *slower])[-1].endswith(
        "0.67x the speed unpipelined over 1 kinds: kernels.MIX_STAGES=1"
    )
    assert decision_lines([*records, attend("cross", 1, 9.0)])[-1].startswith("  triton linear")
    # one launch against the faster two-launch form of each upsampler kind, weighted by its layers
    fused = [
        attend("block", 3, 1.0) | dict(fused=True, fused_keys=128, layers=24),
        attend("dense", 3, 3.0) | dict(fused=True, fused_keys=128, layers=8),
        dict(attend("cross", 1, 1.0), prior="5b_lyrics", fused=True, fused_keys=128),  # not the upsampler
    ]
    lines = decision_lines([*records, *timed, *fused])
    assert lines[-2].startswith("  attend, mix keys 3 stages deep: 1.50x")  # fused rows left out of it
    assert lines[-1] == (  # (2.0·24 + 4.0·8) / (1.0·24 + 3.0·8) = 80 / 48; 48 µs over 32 layers
        "  attend in one launch: 1.67x the speed of two over the upsampler's 2 kinds (1.5 µs a layer): "
        "kernels.FUSED_ATTEND_KEYS=128"
    )
    slow_fused = [attend("block", 3, 2.5) | dict(fused=True, fused_keys=128, layers=24)]
    assert decision_lines([*records, *timed, *slow_fused])[-1].endswith(
        "0.80x the speed of two over the upsampler's 1 kinds (2.5 µs a layer): kernels.FUSED_ATTEND_KEYS=0"
    )
    fast_torch = [decode("graph K=16 + compiled blocks", 0.008, 1.0)]
    assert decision_lines(fast_torch)[-1].endswith("8.0 µs on an H100, within: torch blocks suffice")
    assert decision_lines([decode("sliced", 0.5, 1.0)]) == []
    no_compiled = [records[1], records[3]]  # the compiled row skipped (the budget) or failed
    lines = decision_lines(no_compiled)
    assert lines[4] == (
        "  compiled blocks (the engine's CUDA default) not measured: no verdict on the blocks"
    )
    assert not any("best torch blocks" in line or "the speed of the best" in line for line in lines)
    assert decision_lines(records[4:]) == [  # B's tiles without a decode row (C failed or was skipped)
        "",
        "Decision (GPU-PLAN §4 step 6): no upsampler decode rows",
        "  triton linear 1920x1440: fastest 32x64w4 dot 7.5 µs (default 9.0 µs)",
    ]
    whole = [*records[:3], decode("graph K=16 + whole-slice compile", 0.012, 1.0)]
    lines = decision_lines(whole)
    assert lines[4].split()[-3:] == ["12.0", "|", "12.0"]  # within the limit
    assert lines[5] == (
        "  best torch blocks: graph K=16 + whole-slice compile, 12.0 µs on an H100, within: torch blocks suffice"
    )
    assert lines[6] == (
        "  the whole-slice graph is the bench's own (the engine compiles per block): worth moving into the engine"
    )
    assert "bench's own" not in "\n".join(decision_lines(records))


def test_levels_at_once_are_estimated_on_the_fastest_lever_not_the_last() -> None:
    """The Triton rows come last in the table but are alternatives: a slower last row must not be the
    base of the headline estimate."""

    def lever(path: str, level_1: float, level_0: float) -> dict[str, Any]:
        at = dict(
            levels={"2": 10.0, "1": level_1, "0": level_0}, total=10.0 + level_1 + level_0 + 5.0, x_bound=2.0
        )
        return dict(
            stack="5b_lyrics", lever=path, path=path, prefill_method="one pass", prefill=5.0, here=at, h100=at
        )

    rows = [lever("graph K=16", 100.0, 400.0), lever("graph K=16 + compiled blocks", 40.0, 160.0)]
    rows.append(lever("graph K=16 + triton blocks + PDL", 60.0, 240.0))
    overlap = dict(
        section="G", kind="overlap", alone_steps_per_s=[100.0, 100.0], together_steps_per_s_each=60.0
    )
    row = overlap_row([overlap], rows)
    assert row is not None and row["path"] == "graph K=16 + compiled blocks"
    assert row["here"]["levels"]["1"] == 0.0
    assert row["here"]["total"] == pytest.approx(10.0 + 5.0 + 200.0 * row["overlap_factor"])
    assert row["gain"] == pytest.approx(215.0 / row["here"]["total"])


def test_the_split_adds_up_and_projects_to_an_h100() -> None:
    split = split_step(10.0, int(3.35e9), read_bandwidth=4.0e12, nominal=4.8e12)
    assert split.streaming_ms == pytest.approx(0.8375)
    assert split.streaming_ms + split.fixed_ms == pytest.approx(10.0)
    assert split.efficiency == pytest.approx(4.0 / 4.8)
    assert split.h100_ms == pytest.approx(3.35e9 / (3.35e12 * 4.0 / 4.8) * 1e3 + split.fixed_ms)
    assert split_step(10.0, int(3.35e9), 4.0e12, None).efficiency == 1.0  # a device the bench doesn't know


def test_slices_keep_the_published_layer_pattern() -> None:
    for spec in PRIORS.values():
        full, sliced = (
            attn_funcs(prior_config(spec, False)),
            attn_funcs(prior_config(spec, False, spec.layers)),
        )
        assert sliced == full[spec.layers.start : spec.layers.stop]
    assert (
        attn_funcs(prior_config(PRIORS["upsampler"], False, PRIORS["upsampler"].layers))
        == [
            BLOCK,
            TRANSPOSE,
            PREV_BLOCK,
        ]
        * 2
    )
    five_b = attn_funcs(prior_config(PRIORS["5b_lyrics"], False, PRIORS["5b_lyrics"].layers))
    assert five_b.count(CROSS) == 1 and five_b[-1] == CROSS
    one_b = attn_funcs(prior_config(PRIORS["1b_lyrics"], False, PRIORS["1b_lyrics"].layers))
    assert one_b[0] == PRIME and one_b[-1] == DENSE


def test_bytes_per_step_from_the_shapes_match_the_built_slice_and_the_plan() -> None:
    for spec in PRIORS.values():
        prior = build_prior(
            spec, dry_run=True, device=torch.device("cpu"), dtype=torch.float16, layers=spec.layers
        )
        walked = sum(
            (m.w.numel() + m.b.numel()) * m.w.element_size()
            for name, m in prior.prior.transformer.named_modules()
            if isinstance(m, Conv1D) and not name.endswith("c_enc_kv")
        )
        assert prior.prior.x_out is not None
        head = prior.prior.x_out.weight
        computed = step_bytes(prior.config, attn_funcs(prior.config), torch.float16, 3, static=True)
        assert computed["weights"] == walked and computed["head"] == head.numel() * head.element_size()
    # GPU-PLAN §3: 22.1 MB per upsampler layer and a 15.7 MB head, 1.61 GB a step; 10.8 GB at the 5b_lyrics top
    upsampler = prior_config(PRIORS["upsampler"], False)
    bytes_up = step_bytes(upsampler, attn_funcs(upsampler), torch.float16, 3, static=False)
    assert bytes_up["weights"] / 72 == pytest.approx(22.1e6, rel=0.01)
    assert bytes_up["head"] == pytest.approx(15.7e6, rel=0.01)
    assert bytes_up["total"] == pytest.approx(1.61e9, rel=0.02)
    top = prior_config(PRIORS["5b_lyrics"], False)
    assert step_bytes(top, attn_funcs(top), torch.float16, 3, static=False)["total"] == pytest.approx(
        10.8e9, rel=0.02
    )


def test_a_slice_heavier_than_its_priors_average_layer_is_scaled_by_its_bytes() -> None:
    """At published sizes the upsampler's and 5b_lyrics' slices stream their prior's average layer;
    1b_lyrics' (its one dense layer and a prime layer in 17) streams ~7 % more per layer, which
    scaling by the layer count alone would add to every 1b_lyrics figure (composition_ms takes it off)."""
    from bench.gpu_decode import layer_bytes

    def excess(name: str) -> float:
        spec = PRIORS[name]
        full, cut = prior_config(spec, False), prior_config(spec, False, spec.layers)
        whole = layer_bytes(step_bytes(full, attn_funcs(full), torch.float16, 3, static=True))
        sliced = layer_bytes(step_bytes(full, attn_funcs(cut), torch.float16, 3, static=True))
        return sliced * full.prior_depth / len(spec.layers) / whole - 1

    assert excess("upsampler") == 0
    assert abs(excess("5b_lyrics")) < 0.005
    assert excess("1b_lyrics") == pytest.approx(0.069, abs=0.01)


def _recorder() -> Recorder:
    return Recorder(None, stream=io.StringIO())


def test_a_failing_part_writes_an_error_and_the_next_part_runs() -> None:
    recorder, budget = _recorder(), Budget(None, reserve=0)

    def fails() -> None:
        raise ValueError("boom")

    run_part(recorder, budget, "E", "fails", 0.0, fails)
    run_part(recorder, budget, "F", "works", 0.0, lambda: recorder.emit("F", "figure", value=1))
    run_part(
        recorder, budget, "G", "injected", 0.0, lambda: recorder.emit("G", "figure"), inject_failure=True
    )
    kinds = [(r["section"], r["kind"], r.get("status")) for r in recorder.records]
    assert kinds == [
        ("E", "error", None),
        ("E", "section", "error"),
        ("F", "figure", None),
        ("F", "section", "done"),
        ("G", "error", None),
        ("G", "section", "error"),
    ]
    assert "ValueError: boom" in recorder.records[0]["error"]


@pytest.mark.skipif(not hasattr(__import__("signal"), "setitimer"), reason="needs POSIX interval timers")
def test_a_part_that_overruns_the_budget_is_stopped() -> None:
    recorder = _recorder()

    def forever() -> None:
        while True:
            sum(range(1000))

    run_part(recorder, Budget(0.3, reserve=0.0), "C", "forever", 0.0, forever)
    assert [r["kind"] for r in recorder.records] == ["error", "section"]
    assert "BudgetSpent" in recorder.records[0]["error"] and recorder.records[1]["status"] == "stopped"
    run_part(recorder, Budget(0.3, reserve=0.0), "C", "too big", 1.0, forever)  # does not start at all
    assert recorder.records[-2]["kind"] == "skip" and "budget" in recorder.records[-2]["reason"]


@pytest.mark.skipif(not hasattr(__import__("signal"), "pthread_sigmask"), reason="needs POSIX signal masks")
def test_an_alarm_held_back_is_raised_when_the_block_ends() -> None:
    """The profiler's start and stop run with the budget's alarm held back: one that fires inside
    them would leave the profiler half on."""
    import signal

    def on_alarm(signum: int, frame: object) -> None:
        raise BudgetSpent("the --budget ran out in this part")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    reached = []
    try:
        with pytest.raises(BudgetSpent):
            with alarm_held():
                signal.raise_signal(signal.SIGALRM)
                reached.append("the rest of the block")
        assert reached == ["the rest of the block"]
        assert signal.SIGALRM not in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    finally:
        signal.signal(signal.SIGALRM, previous)


# ---- the decode paths on a tiny slice


@pytest.fixture
def tiny_upsampler() -> tuple[Any, Any, torch.Tensor]:
    spec = PRIORS["upsampler"]
    prior = build_prior(
        spec, dry_run=True, device=torch.device("cpu"), dtype=torch.float32, layers=spec.layers
    )
    return (
        prior,
        random_conditioning(prior, 3, torch.device("cpu")),
        random_ids(prior, 3, 20, torch.device("cpu")),
    )


def test_the_benchs_own_paths_read_as_many_keys_as_the_engines() -> None:
    """The static step reads every slot of a dense layer's cache (1b_lyrics): the bench's windows keep
    the engine decoder's cache lengths, or its rows would stream fewer keys than the engine's."""
    spec = PRIORS["1b_lyrics"]
    cpu = torch.device("cpu")
    prior = build_prior(spec, dry_run=True, device=cpu, dtype=torch.float32, layers=spec.layers)
    cond, known = random_conditioning(prior, 3, cpu), random_ids(prior, 3, 20, cpu)
    ours = prefilled(prior, cond, known, known.shape[1] + 40).cache.layers
    engine = decoding.WindowDecoder(prior, 3, decoding.DecodeOptions(path="static")).cache.layers
    assert DENSE in attn_funcs(prior_config(spec, True, spec.layers))
    assert [layer.slots for layer in ours] == [layer.slots for layer in engine]


def test_the_stepper_draws_what_the_eager_static_step_draws(tiny_upsampler: Any) -> None:
    prior, cond, known = tiny_upsampler
    uniforms = window_uniforms(3, 1 + 4 * 6, torch.device("cpu"), seed=3)
    stepper = StaticStepper(prior, prefilled(prior, cond, known, 60), uniforms, per_call=4, capture=False)
    while stepper.done < uniforms.shape[0]:
        stepper.advance()
    stepper.close()
    prior.set_static_decode(True)
    state, token, eager = prefilled(prior, cond, known, 60), None, []
    with torch.inference_mode():
        for t in range(uniforms.shape[0]):
            token = inverse_cdf(prior.step_in_inference_mode(state, token, check_ids=False), uniforms[t])
            eager.append(token)
    prior.set_static_decode(False)
    assert torch.equal(stepper.tokens, torch.stack(eager, 1))
    assert not torch.equal(stepper.tokens, torch.roll(stepper.tokens, 1, dims=1))  # the draws do vary


def _stepper_runs(name: str) -> Callable[..., StaticStepper]:
    """Runs of the bench's stepper over 21 tokens of one window of the prior's tiny slice, each from
    the same prefilled state and uniforms, with the given compile options."""
    spec = PRIORS[name]
    cpu = torch.device("cpu")
    prior = build_prior(spec, dry_run=True, device=cpu, dtype=torch.float32, layers=spec.layers)
    cond, known = random_conditioning(prior, 3, cpu), random_ids(prior, 3, 20, cpu)
    uniforms = window_uniforms(3, 1 + 4 * 5, cpu, seed=5)

    def run(**compiled: Any) -> StaticStepper:
        state = prefilled(prior, cond, known, 60)
        stepper = StaticStepper(
            prior, state, uniforms, per_call=4, capture=False, keep_logits=True, **compiled
        )
        while stepper.done < uniforms.shape[0]:
            stepper.advance()
        stepper.close()
        return stepper

    return run


@pytest.mark.parametrize("scope", ["block", "slice"])
@pytest.mark.parametrize("name", list(PRIORS))
def test_the_steppers_compiled_step_is_one_graph_per_kind_or_slice_with_the_eager_tokens(
    name: str, scope: str
) -> None:
    """The bench's own compiled rows (and H's compiled-vs-eager checks) do compile: dynamo traces one
    graph per attention kind ("block") or the slice's whole layer stack once ("slice": 5b's cross and
    1b's prime layer included), and the traced graphs draw the eager stepper's tokens and logits."""
    from torch._dynamo.testing import CompileCounter

    from bench import gpu_paths

    run = _stepper_runs(name)
    torch._dynamo.reset()
    gpu_paths._COMPILED.clear()
    counter = CompileCounter()
    try:
        eager = run()
        compiled = run(compile_mode="default", compile_scope=scope, compile_backend=counter)
        transformer = compiled.prior.prior.transformer
        assert not {"static_layers", "decode_static"} & set(transformer.__dict__)  # the methods are back
    finally:
        torch._dynamo.reset()
        gpu_paths._COMPILED.clear()
    config = prior_config(PRIORS[name], True, PRIORS[name].layers)
    graphs = 1 if scope == "slice" else len(set(attn_funcs(config)))
    assert counter.frame_count == graphs and compiled.compiled_graphs == graphs
    assert torch.equal(compiled.tokens, eager.tokens)
    assert compiled.logits is not None and eager.logits is not None
    assert torch.equal(compiled.logits, eager.logits)


@pytest.mark.slow
def test_inductor_compiles_the_upsampler_slice_into_one_graph_with_the_eager_tokens() -> None:
    """The GPU row's compiler on the CPU (about 15 s): one graph of the six layers, the eager
    stepper's tokens, logits within float rounding."""
    run = _stepper_runs("upsampler")
    torch._dynamo.reset()
    try:
        eager = run()
        whole = run(compile_mode="default", compile_scope="slice", compile_backend="inductor")
    finally:
        torch._dynamo.reset()
    assert whole.compiled_graphs == 1
    assert torch.equal(whole.tokens, eager.tokens)
    assert whole.logits is not None and eager.logits is not None
    assert float((whole.logits - eager.logits).abs().max()) <= 1e-5


def _broken_engine() -> types.ModuleType:
    """An engine whose decoder fails: the bench must fall back to its own path and say why."""

    class WindowDecoder:
        def __init__(self, prior: Any, batch: int, options: Any) -> None:
            raise NotImplementedError("not yet")

    module = types.ModuleType(ENGINE_MODULE)
    module.DecodeOptions = decoding.DecodeOptions  # type: ignore[attr-defined]
    module.WindowDecoder = WindowDecoder  # type: ignore[attr-defined]
    module.COMPILE_BACKEND = decoding.COMPILE_BACKEND  # type: ignore[attr-defined]
    return module


def test_decode_rows_go_through_the_engine_when_it_exists_and_fall_back_when_it_fails(
    tiny_upsampler: Any,
) -> None:
    prior, cond, known = tiny_upsampler
    plan = WindowPlan(first=known.shape[1], segment=16, timed=1, profiled=16)
    path = next(p for p in PATHS if p.name == "graph K=16")
    common: dict[str, Any] = dict(capture=False, compile_backend="eager", profile=True)
    timing = time_path(path, prior, cond, known, plan, engine=decoding, **common)
    assert timing.engine == ENGINE_MODULE and timing.engine_error is None
    assert timing.tokens.shape == (3, 3 * 16) and timing.profile is not None and timing.profile.events > 0
    fallback = time_path(path, prior, cond, known, plan, engine=_broken_engine(), **common)
    assert fallback.engine == "bench" and "NotImplementedError" in (fallback.engine_error or "")
    assert fallback.tokens.shape == (3, 1 + 3 * 16) and len(fallback.segments_ms) == 1


def test_a_budget_spent_while_profiling_stops_the_profiler(
    tiny_upsampler: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The budget's alarm stops a row mid-profile: a profiler left on would slow every later
    measurement (and crashed the interpreter at exit)."""
    from bench import gpu_timing

    prior, cond, known = tiny_upsampler
    plan = WindowPlan(first=known.shape[1], segment=4, timed=1, profiled=4)
    path = next(p for p in PATHS if p.name == "static")

    def spent_while_profiled(device: torch.device) -> None:  # the alarm at the profiled segment's end
        if torch.autograd.profiler._is_profiler_enabled:
            raise BudgetSpent("the --budget ran out in this part")

    monkeypatch.setattr(gpu_timing, "sync", spent_while_profiled)
    with pytest.raises(BudgetSpent):
        time_path(
            path, prior, cond, known, plan, engine=None, capture=False, compile_backend="eager", profile=True
        )
    assert not torch.autograd.profiler._is_profiler_enabled


@pytest.mark.slow
def test_the_triton_row_goes_through_the_engines_kernels_and_fails_where_they_cannot_run(
    tiny_upsampler: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bench has no Triton version of its own: the row is the engine's kernels or an error,
    never the torch step under the Triton row's name."""
    from sampler.jukebox import kernels

    prior, cond, known = tiny_upsampler
    plan = WindowPlan(first=known.shape[1], segment=2, timed=1, profiled=0)
    # 2 tokens a call, so that the interpreter runs few: progress marks fall every call
    path = dataclasses.replace(next(p for p in PATHS if p.kernels == "triton"), per_call=2)
    common: dict[str, Any] = dict(capture=False, compile_backend="eager")
    timing = time_path(path, prior, cond, known, plan, engine=decoding, **common)
    assert timing.engine == ENGINE_MODULE and timing.engine_error is None and timing.tokens.shape == (3, 4)
    monkeypatch.setattr(kernels, "unavailable", lambda device, rows=1: "no triton here")
    with pytest.raises(RuntimeError, match="the engine decodes with torch blocks, not triton"):
        time_path(path, prior, cond, known, plan, engine=decoding, **common)
    with pytest.raises(RuntimeError, match="no adapter ran graph K=16 \\+ triton blocks"):
        time_path(path, prior, cond, known, plan, engine=None, **common)


def test_a_graph_row_whose_capture_failed_in_the_engine_is_an_error_not_the_static_steps_figure() -> None:
    """The engine falls back to the eager static step when a capture fails (and logs why); a graph row
    must not report that under its own name where graphs can be captured."""

    class FellBack:
        def __init__(self, prior: Any, batch: int, options: Any) -> None:
            self.path, self.kernels = "graph", "torch"

        def prepare(self) -> None:
            self.path = "static"  # as WindowDecoder does after a failed capture

    engine = types.SimpleNamespace(DecodeOptions=dict, WindowDecoder=FellBack, COMPILE_BACKEND="inductor")
    job: Any = types.SimpleNamespace(prior=None, cond=types.SimpleNamespace(batch=3))
    graph = next(p for p in PATHS if p.name == "graph K=16")
    with pytest.raises(RuntimeError, match="the engine decodes with the static path, not a CUDA graph"):
        engine_adapter(engine, graph, True, "eager")(job)
    assert engine.COMPILE_BACKEND == "inductor"


def test_a_compiled_row_whose_engine_fell_back_to_eager_blocks_is_the_benchs_compiled_path() -> None:
    """The engine's compiler failed on some attention kind after compiling others (it logs it and
    decodes with eager blocks): the row must not be that figure under the compiled name."""

    class FellBack:
        def __init__(self, prior: Any, batch: int, options: Any) -> None:
            self.path, self.kernels, self.compiled = "graph", "torch", True

        def prepare(self) -> None:
            self.compiled = False  # as WindowDecoder does after a failed compile

    engine = types.SimpleNamespace(DecodeOptions=dict, WindowDecoder=FellBack, COMPILE_BACKEND="inductor")
    job: Any = types.SimpleNamespace(prior=None, cond=types.SimpleNamespace(batch=3))
    compiled = next(p for p in PATHS if p.name == "graph K=16 + compiled blocks")
    with pytest.raises(RuntimeError, match="the engine decodes with eager torch blocks, not compiled ones"):
        engine_adapter(engine, compiled, False, "eager")(job)
    graph = next(p for p in PATHS if p.name == "graph K=16")
    with pytest.raises(AttributeError, match="known"):  # past the checks, to this fake job's missing ids
        engine_adapter(engine, graph, False, "eager")(job)
    require_path(FellBack(None, 3, None), "graph", capture=False)  # the CPU: no graph to capture
    require_path(types.SimpleNamespace(path="static"), "static", capture=True)


def test_the_pdl_row_is_skipped_with_its_reason_where_the_gpu_has_no_pdl() -> None:
    from sampler.jukebox import kernels

    recorder = Recorder(None, stream=io.StringIO())
    ctx = Context(recorder, Budget(60.0, reserve=0.0), torch.device("cpu"), True, decoding, "aot_eager")
    pdl = next(p for p in PATHS if p.pdl)
    decode_paths(ctx, ("upsampler",), (pdl,))
    assert [(r["kind"], r["what"]) for r in recorder.records] == [
        ("skip", "upsampler: graph K=16 + triton blocks + PDL")
    ]
    assert "compute capability 9.0" in recorder.records[0]["reason"]
    assert not kernels.PDL


def _tile_record(
    tile: Tile, shape: tuple[int, int], us: float, dtype: str = "torch.float32"
) -> dict[str, Any]:
    return dict(
        section="B", kind="triton_linear", n_in=shape[0], n_out=shape[1], block_n=tile.block_n,
        block_k=tile.block_k, warps=tile.warps, dot=tile.dot, stages=tile.stages, pdl=tile.pdl,
        split_k=tile.split_k, tile=tile.name, dtype=dtype, us=us, matches_torch=True,
    )  # fmt: skip


def test_the_fastest_tile_is_the_least_layer_time_among_tiles_timed_at_every_shape() -> None:
    shapes = [(64, 192), (16, 64), (64, 64), (64, 64)]  # a layer: c_fc and c_proj share a shape
    default = Tile.default()
    deep, wide, partial_tile = (
        Tile(16, 128, 8, False, stages=5),
        Tile(64, 64, 4, True),
        Tile(16, 64, 4, False),
    )
    records = [
        *(_tile_record(default, shape, 10.0) for shape in dict.fromkeys(shapes)),
        # deep is slower than wide at the shapes a layer has once, faster at the one it has twice
        _tile_record(deep, (64, 192), 9.0), _tile_record(deep, (16, 64), 9.0), _tile_record(deep, (64, 64), 4.0),
        _tile_record(wide, (64, 192), 6.0), _tile_record(wide, (16, 64), 6.0), _tile_record(wide, (64, 64), 8.0),
        # fastest everywhere it was timed, but not timed at every shape
        _tile_record(partial_tile, (64, 192), 1.0), _tile_record(partial_tile, (16, 64), 1.0),
        # not candidates: with PDL (a launch option), in another dtype, or wrong
        _tile_record(dataclasses.replace(wide, pdl=True), (64, 64), 0.5),
        *(_tile_record(Tile(64, 128, 8, False), shape, 0.5) | dict(matches_torch=False) for shape in shapes),
        *(_tile_record(Tile(32, 256, 8, False), shape, 0.5, "torch.float16") for shape in shapes),
    ]  # fmt: skip
    choice = fastest_tile(records, shapes, torch.float32)
    assert choice is not None
    assert (choice.tile, choice.layer_us, choice.default_layer_us) == (deep, 26.0, 40.0)
    assert fastest_tile(records, [(64, 192), (16, 64)], torch.float32).tile == partial_tile  # type: ignore[union-attr]
    assert fastest_tile(records, [(1, 1)], torch.float32) is None
    assert fastest_tile(records[4:], shapes, torch.float32).default_layer_us is None  # type: ignore[union-attr]


def _ctx() -> Context:
    recorder = Recorder(None, stream=io.StringIO())
    ctx = Context(recorder, Budget(600.0, reserve=0.0), torch.device("cpu"), True, decoding, "aot_eager")
    ctx.read_bandwidth = 1e11  # section A's figure, which a row's split needs
    return ctx


def test_the_tuned_row_takes_pdl_only_where_this_runs_pdl_row_beat_the_plain_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sampler.jukebox import kernels

    ctx = _ctx()
    run = SliceRun.build(ctx, PRIORS["upsampler"])
    tuned = TUNED[0]
    tile, why = launch_tile(ctx, run, tuned)
    assert tile is None and why is not None and "bench B timed no tile at every linear shape" in why
    best = Tile(16, 64, 4, False, stages=4)
    for shape in layer_shapes(run.prior):
        ctx.recorder.records += [_tile_record(best, shape, 1.0), _tile_record(Tile.default(), shape, 2.0)]

    def decode(path: str, ms: float) -> dict[str, Any]:
        return dict(kind="decode", prior="upsampler", path=path, slice_ms_per_step=ms)

    plain, pdl = (p.name for p in PATHS if p.kernels == "triton" and not p.tuned)
    for capable, rows, want in (
        (True, [decode(plain, 2.0), decode(pdl, 1.5)], True),
        (True, [decode(plain, 2.0), decode(pdl, 2.5)], False),
        (True, [decode(plain, 2.0)], False),  # PDL not measured
        (False, [decode(plain, 2.0), decode(pdl, 1.5)], False),  # a GPU without it
    ):
        monkeypatch.setattr(kernels, "pdl_capable", lambda device, capable=capable: capable)
        ctx.recorder.records += rows
        tile, why = launch_tile(ctx, run, tuned)
        assert why is None and tile == dataclasses.replace(best, pdl=want)
        chosen = ctx.recorder.records[-1]
        assert chosen["kind"] == "tuned_tile" and chosen["tile"] == tile.name and chosen["pdl"] == want
        assert (chosen["linear_us_per_layer"], chosen["default_linear_us_per_layer"]) == (4.0, 8.0)
        assert chosen["fused_attend_keys"] == 0  # B timed no attention


def test_the_tuned_row_takes_one_attention_launch_only_where_b_found_it_faster_for_its_prior() -> None:
    ctx = _ctx()
    run = SliceRun.build(ctx, PRIORS["upsampler"])
    for shape in layer_shapes(run.prior):
        ctx.recorder.records.append(_tile_record(Tile.default(), shape, 1.0))

    def attend(prior: str, kind: str, us: float, fused: bool, layers: int = 4) -> dict[str, Any]:
        return dict(
            kind="triton_attend", prior=prior, attention=kind, mix_stages=3, fused=fused, fused_keys=128,
            layers=layers, us=us,
        )  # fmt: skip

    for rows, want in (
        ([attend("upsampler", "block", 2.0, False), attend("upsampler", "block", 1.5, True)], 128),
        ([attend("upsampler", "block", 2.0, False), attend("upsampler", "block", 2.5, True)], 0),
        # faster in one kind, slower by more in a kind of more layers
        (
            [
                attend("upsampler", "block", 2.0, False), attend("upsampler", "block", 1.0, True, layers=1),
                attend("upsampler", "transpose-block", 2.0, False), attend("upsampler", "transpose-block", 3.0, True),
            ],
            0,
        ),
        ([attend("5b_lyrics", "block", 2.0, False), attend("5b_lyrics", "block", 1.0, True)], 0),  # not its prior
    ):  # fmt: skip
        ctx.recorder.records = [r for r in ctx.recorder.records if r["kind"] != "triton_attend"] + rows
        tile, why = launch_tile(ctx, run, TUNED[0])
        assert why is None and tile is not None and tile.fused_attend_keys == want
        assert ctx.recorder.records[-1]["fused_attend_keys"] == want


@pytest.mark.slow
def test_the_tuned_row_decodes_with_b_s_fastest_tile_and_checks_it_against_the_torch_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sampler.jukebox import kernels

    ctx = _ctx()
    decode_paths(ctx, ("upsampler",), TUNED)  # B has not run: skipped, and says why
    assert [(r["kind"], r["what"]) for r in ctx.recorder.records] == [
        ("skip", "upsampler: graph K=16 + triton blocks, B's fastest tile")
    ]
    best = Tile(16, 32, 4, False, stages=2)
    assert best != Tile.default()
    shapes = layer_shapes(SliceRun.build(ctx, PRIORS["upsampler"]).prior)
    for shape in shapes:
        ctx.recorder.records += [_tile_record(best, shape, 1.0), _tile_record(Tile.default(), shape, 2.0)]
    launched: list[tuple[int, int, int, int, bool]] = []
    linear = kernels.linear

    def spy(*args: Any, **kwargs: Any) -> Any:
        k = kernels
        launched.append((k.LINEAR_BLOCK_N, k.LINEAR_BLOCK_K, k.LINEAR_WARPS, k.LINEAR_STAGES, k.LINEAR_DOT))
        return linear(*args, **kwargs)

    monkeypatch.setattr(kernels, "linear", spy)
    for kind in ("block", "transpose-block", "previous-block"):  # B found one attention launch faster
        ctx.recorder.records += [
            dict(kind="triton_attend", prior="upsampler", attention=kind, fused=fused, fused_keys=128, us=us)
            for fused, us in ((False, 2.0), (True, 1.0))
        ]
    fused_reads: list[bool] = []
    fused_attend = kernels.fused_attend

    def fused_spy(*args: Any) -> bool:
        fused_reads.append(fused_attend(*args))
        return fused_reads[-1]

    monkeypatch.setattr(kernels, "fused_attend", fused_spy)
    default = Tile.default()
    decode_paths(ctx, ("upsampler",), TUNED)
    records = ctx.recorder.records
    assert [r for r in records if r["kind"] == "error"] == []
    chosen = next(r for r in records if r["kind"] == "tuned_tile")
    assert chosen["tile"] == dataclasses.replace(best, fused_attend_keys=128).name
    assert fused_reads and all(fused_reads)  # every attention of the row in one launch
    row = next(r for r in records if r["kind"] == "decode")
    assert row["path"] == TUNED[0].name and row["engine"] == ENGINE_MODULE
    checks = [r for r in records if r["kind"] == "check"]
    assert len(checks) == 2 and all(r["tokens_equal"] == r["steps"] for r in checks)
    assert launched and set(launched) == {(16, 32, 4, 2, False)}
    assert Tile.default() == default  # the kernels' own tile again after the row
    assert kernels.FUSED_ATTEND_KEYS == 0


def test_a_compiled_row_that_compiled_nothing_is_an_error_not_the_eager_figure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As the bench's compiled step once was: a swap that the static step never called."""
    from bench import gpu_paths

    ctx = _ctx()
    max_autotune = next(p for p in PATHS if p.compile_mode == "max-autotune-no-cudagraphs")  # the bench's own
    monkeypatch.setattr(gpu_paths, "compiled_blocks", lambda prior, mode, backend: contextlib.nullcontext())
    decode_paths(ctx, ("upsampler",), (max_autotune,))
    errors = [r for r in ctx.recorder.records if r["kind"] == "error"]
    assert len(errors) == 1 and "compiled no graph" in errors[0]["error"]
    assert [r for r in ctx.recorder.records if r["kind"] == "decode"] == []


def test_g_replays_each_graph_alone_and_interleaved_before_it_starts_a_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A graph's first replay (and a stream's first use) costs more than the rest: G times none."""
    from bench import gpu_window

    events: list[str] = []
    advance = StaticStepper.advance

    def spy_advance(self: StaticStepper) -> None:
        events.append(f"advance {id(self)}")
        advance(self)

    clock = types.SimpleNamespace(perf_counter=lambda: events.append("clock") or float(len(events)))
    monkeypatch.setattr(StaticStepper, "advance", spy_advance)
    monkeypatch.setattr(gpu_window, "time", clock)
    ctx = _ctx()
    gpu_window.overlap(ctx)
    before = events[: events.index("clock")]
    steppers = set(before)
    assert len(steppers) == 2 and all(before.count(s) == 2 for s in steppers)  # alone, then interleaved
    (check,) = [r for r in ctx.recorder.records if r["kind"] == "check"]
    assert check["tokens_equal"] == check["steps"] == 2


def test_the_triton_tiles_row_times_each_tile_and_leaves_the_default(tmp_path: Path) -> None:
    from sampler.jukebox import kernels

    recorder = Recorder(None, stream=io.StringIO())
    ctx = Context(recorder, Budget(60.0, reserve=0.0), torch.device("cpu"), True, decoding, "aot_eager")
    default = Tile.default()
    assert default in DRY_RUN_TILES  # the dry run times the default tile, and a split one
    assert [tile.split_k > 1 for tile in DRY_RUN_TILES] == [False] * 4 + [True]
    triton_linear_tiles(ctx)
    rows = [r for r in recorder.records if r["kind"] == "triton_linear"]
    # the dry run: at the tiny upsampler's layer shapes, so that C's tuned row finds its tile
    layer = layer_shapes(SliceRun.build(ctx, PRIORS["upsampler"]).prior)
    shapes = list(dict.fromkeys(layer))
    assert len(shapes) == 3
    assert [(r["n_in"], r["n_out"]) for r in rows] == [shape for shape in shapes for _ in DRY_RUN_TILES]
    tiles = [
        Tile(r["block_n"], r["block_k"], r["warps"], r["dot"], r["stages"], split_k=r["split_k"])
        for r in rows
    ]
    assert tiles == list(DRY_RUN_TILES * 3)
    assert [r["tile"] for r in rows] == [tile.name for tile in DRY_RUN_TILES * 3]
    assert all(r["us"] > 0 and r["matches_torch"] and r["error"] < 1e-5 for r in rows)  # fp32 here
    # the split tile splits every tiny shape of more than one K tile (the interpreter fills no SMs)
    splits = {(r["n_in"], r["k_parts"]) for r in rows if r["split_k"] > 1}
    assert splits == {(n_in, min(DRY_RUN_TILES[-1].split_k, -(-n_in // 64))) for n_in, _ in shapes}
    assert all(r["programs"] == -(-r["n_out"] // r["block_n"]) * r["k_parts"] for r in rows)
    assert Tile.default() == default
    assert (kernels.LINEAR_BLOCK_N, kernels.LINEAR_WARPS) == (default.block_n, default.warps)
    assert kernels.LINEAR_SPLIT_K == default.split_k == 1
    assert [r["default_tile"] for r in rows] == [tile == default for tile in DRY_RUN_TILES * 3]
    assert fastest_tile(rows, layer, ctx.dtype) is not None


def test_the_tiles_run_shape_by_shape_so_a_short_budget_still_times_the_first() -> None:
    class FirstRowOnly(Budget):
        def __init__(self) -> None:
            super().__init__(None, reserve=0.0)
            self.asked = 0

        def fits(self, estimate: float) -> bool:
            self.asked += 1
            return self.asked == 1

    recorder = Recorder(None, stream=io.StringIO())
    ctx = Context(recorder, FirstRowOnly(), torch.device("cpu"), True, decoding, "aot_eager")
    triton_linear_tiles(ctx)
    shapes = list(dict.fromkeys(layer_shapes(SliceRun.build(ctx, PRIORS["upsampler"]).prior)))
    timed = {(r["n_in"], r["n_out"]) for r in recorder.records if r["kind"] == "triton_linear"}
    skipped = [r["what"] for r in recorder.records if r["kind"] == "skip"]
    assert timed == {shapes[0]}
    assert skipped == [f"triton linear tiles {k}x{n}" for k, n in shapes[1:]]


def test_a_tile_whose_linear_parts_from_torch_is_recorded_wrong_and_never_chosen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sampler.jukebox import kernels

    linear = kernels.linear
    wrong = TILES[1]  # a tile the dry run times, not the default

    def off_at_one_tile(*args: Any, **kwargs: Any) -> torch.Tensor:
        y = linear(*args, **kwargs)
        return y * 1.05 if Tile.default() == wrong else y  # as if it missed a few K tiles

    monkeypatch.setattr(kernels, "linear", off_at_one_tile)
    ctx = _ctx()
    triton_linear_tiles(ctx)
    rows = [r for r in ctx.recorder.records if r["kind"] == "triton_linear"]
    assert {r["tile"] for r in rows if not r["matches_torch"]} == {wrong.name}
    assert all(0.04 < r["error"] < 0.06 for r in rows if r["tile"] == wrong.name)
    for r in rows:  # the wrong tile made the fastest: it must still not be chosen
        r["us"] = 0.1 if r["tile"] == wrong.name else r["us"]
    layer = layer_shapes(SliceRun.build(ctx, PRIORS["upsampler"]).prior)
    choice = fastest_tile(rows, layer, ctx.dtype)
    assert choice is not None and choice.tile != wrong


def test_a_chosen_tile_is_what_linear_launches_with_until_the_block_ends() -> None:
    from sampler.jukebox import kernels

    default = Tile.default()
    other = next(tile for tile in TILES if tile.stages != default.stages and tile.dot != default.dot)
    split = next(tile for tile in TILES if tile.split_k != default.split_k)
    with pytest.raises(RuntimeError), other.chosen():
        assert Tile.default() == other
        assert (kernels.LINEAR_BLOCK_N, kernels.LINEAR_BLOCK_K) == (other.block_n, other.block_k)
        raise RuntimeError("a failed timing")
    assert Tile.default() == default
    with pytest.raises(RuntimeError), split.chosen():
        assert Tile.default() == split and kernels.LINEAR_SPLIT_K == split.split_k
        raise RuntimeError("a failed timing")
    assert Tile.default() == default


def test_the_triton_attention_row_times_every_attention_kind_of_every_prior() -> None:
    recorder = Recorder(None, stream=io.StringIO())
    ctx = Context(recorder, Budget(60.0, reserve=0.0), torch.device("cpu"), True, decoding, "aot_eager")
    triton_attention(ctx)
    rows = [r for r in recorder.records if r["kind"] == "triton_attend"]
    kinds = {
        name: [ATTN_NAMES[f] for f in dict.fromkeys(attn_funcs(prior_config(spec, True)))]
        for name, spec in PRIORS.items()
    }
    from sampler.jukebox import kernels

    # each kind at the kernels' mix pipeline depth, then unpipelined (once where they never pipeline),
    # then in one launch where it reads at most 128 keys of 16-byte aligned rows (which pipeline)
    head_dims = {
        name: prior_config(spec, True).transformer_config().head_dim for name, spec in PRIORS.items()
    }
    depths = {p: list(dict.fromkeys((kernels.mix_stages(d, ctx.dtype), 1))) for p, d in head_dims.items()}
    keys = {(r["prior"], r["attention"]): r["keys"] for r in rows}
    forms = {
        (p, k): [(stages, False) for stages in depths[p]]
        + ([(3, True)] if depths[p][0] == 3 and keys[p, k] <= kernels.FUSED_MAX_KEYS else [])
        for p, names in kinds.items()
        for k in names
    }
    assert [(r["prior"], r["attention"], r["mix_stages"], r["fused"]) for r in rows] == [
        (p, k, stages, fused) for p, names in kinds.items() for k in names for stages, fused in forms[p, k]
    ]
    assert depths["upsampler"] == [3, 1]
    assert all(forms["upsampler", k][-1] == (3, True) for k in kinds["upsampler"])  # every kind fused
    assert "cross" in kinds["5b_lyrics"] and "prime" in kinds["1b_lyrics"]
    assert all(r["us"] > 0 and r["keys"] > 0 and not r["in_graph"] for r in rows)
    ids = {name: kind for kind, name in ATTN_NAMES.items()}
    for r in rows:
        assert r["layers"] == attn_funcs(prior_config(PRIORS[r["prior"]], True)).count(ids[r["attention"]])
    assert (kernels.MIX_STAGES, kernels.FUSED_ATTEND_KEYS) == (3, 0)


@pytest.mark.slow
def test_the_device_check_script_runs_its_three_steps_into_out(tmp_path: Path) -> None:
    """scripts/gpu-check.sh is what a session lent a GPU runs, once, on a machine with torch alone:
    here on the CPU with no time to spare, every step must still leave its files (at most 8 come back)."""
    proc = subprocess.run(
        ["bash", "scripts/gpu-check.sh", "1"],
        cwd=ROOT,
        env=os.environ
        | {"OUT": str(tmp_path), "GPU_CHECK_DEVICE": "cpu", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert files == [
        "cuda-tests.log",
        "env.txt",
        "full/gpu.jsonl",
        "full/log.txt",
        "full/summary.txt",
        "smoke/gpu.jsonl",
        "smoke/log.txt",
        "smoke/summary.txt",
    ], proc.stdout + proc.stderr
    assert len(files) <= 8
    assert "torch " in (tmp_path / "env.txt").read_text()
    tests = (tmp_path / "cuda-tests.log").read_text()
    # the CUDA tests only (skipped here), each named as it ends, collected on torch alone
    assert "SKIPPED" in tests and "failed" not in tests and "error" not in tests.lower(), tests
    assert "test_on_cuda_graph_replays_give_the_eager_static_tokens" in tests
    assert "test_compiled_blocks_make_one_graph_per_attention_kind" not in tests, tests
    for part in ("smoke", "full"):  # a spent budget: each section is skipped with its reason
        records = [json.loads(line) for line in (tmp_path / part / "gpu.jsonl").read_text().splitlines()]
        assert any(r.get("kind") == "skip" and r.get("reason") for r in records), records
