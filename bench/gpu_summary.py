"""Section I of `bench/gpu.py`: seconds per minute of audio per level and in total, for each lever,
measured here and projected to an H100, against the bound and the 528 s target.

Computed from whatever records exist (a time-out still gets a summary of what was measured); a
lever missing a figure shows "-" and no total. Each lever adds one change to the row above it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.gpu_facts import (
    FORMULA,
    H100_BANDWIDTH,
    STEPS_PER_MINUTE,
    TARGET_SECONDS,
    UPSAMPLER_LAYER_LIMIT,
)
from bench.gpu_models import PRIORS, STACKS

# (label, decode path, prefill method): cumulative, in the order GPU-PLAN §3 applies them.
LEVERS = (
    ("today: sliced, reference-chunk prefill", "sliced", "reference chunks"),
    ("+ one-pass prefill", "sliced", "one pass"),
    ("+ static step", "static", "one pass"),
    ("+ CUDA graph, K=1", "graph K=1", "one pass"),
    ("+ K=16 tokens per replay", "graph K=16", "one pass"),
    ("+ compiled blocks", "graph K=16 + compiled blocks", "one pass"),
    ("+ whole-slice compile", "graph K=16 + whole-slice compile", "one pass"),
    ("+ max-autotune blocks", "graph K=16 + max-autotune blocks", "one pass"),
    # not on top of the compiled blocks but instead of them: its gain reads against the row above
    ("Triton blocks instead", "graph K=16 + triton blocks", "one pass"),
    ("+ PDL launches", "graph K=16 + triton blocks + PDL", "one pass"),
    # B's fastest linear tile, with PDL where the row above beat the one before it
    ("+ B's fastest linear tile", "graph K=16 + triton blocks, B's fastest tile", "one pass"),
)
Record = dict[str, Any]
TRITON_PATHS = tuple(path for _, path, _ in LEVERS[-3:])
TRITON_PATH, PDL_PATH, TUNED_PATH = TRITON_PATHS
COMPILED_PATH, WHOLE_SLICE_PATH = (path for _, path, _ in LEVERS[5:7])


def latest(records: Sequence[Record], kind: str, **match: Any) -> Record | None:
    found = [r for r in records if r.get("kind") == kind and all(r.get(k) == v for k, v in match.items())]
    return found[-1] if found else None


def _per_level(record: Record | None, field: str, level: int) -> float | None:
    if record is None:
        return None
    values = record.get(field) or {}
    value = values.get(str(level), values.get(level))  # type: ignore[call-overload]
    return None if value is None else float(value)


def _sum(values: Sequence[float | None]) -> float | None:
    return None if any(v is None for v in values) else sum(v for v in values if v is not None)


def _bound(records: Sequence[Record], stack: str, bandwidth: float) -> float | None:
    """The stack's bound: each level's smallest bytes per step (any path), streamed at `bandwidth`."""
    total = 0.0
    for prior in STACKS[stack]:
        rows = [r for r in records if r.get("kind") == "decode" and r.get("prior") == prior]
        if not rows:
            return None
        least = min(int(r["bytes_per_step"]) for r in rows)
        total += sum(STEPS_PER_MINUTE[level] * least / bandwidth for level in PRIORS[prior].levels)
    return total


def stack_rows(records: Sequence[Record], stack: str) -> list[Record]:
    """One row per lever: per-level seconds here and on an H100, totals, × bound, gain."""
    top, upsampler = STACKS[stack]
    env = latest(records, "env", section="A") or {}
    bandwidth = latest(records, "bandwidth", section="A") or {}
    nominal = env.get("nominal_tb_s") or bandwidth.get("read_tb_s")
    bound_here = None if nominal is None else _bound(records, stack, float(nominal) * 1e12)
    bound_h100 = _bound(records, stack, H100_BANDWIDTH)
    rows: list[Record] = []
    previous: Record | None = None
    for label, path, method in LEVERS:
        decode_top = latest(records, "decode", prior=top, path=path)
        decode_up = latest(records, "decode", prior=upsampler, path=path)
        prefill_top = latest(records, "prefill", prior=top, method=method)
        prefill_up = latest(records, "prefill", prior=upsampler, method=method)
        prefill = _sum(
            [
                _per_level(prefill_top, "s_per_min", 2),
                _per_level(prefill_up, "s_per_min", 1),
                _per_level(prefill_up, "s_per_min", 0),
            ]
        )
        row: Record = dict(stack=stack, lever=label, path=path, prefill_method=method, prefill=prefill)
        for where, field in (("here", "s_per_min"), ("h100", "h100_s_per_min")):
            levels = {
                2: _per_level(decode_top, field, 2),
                1: _per_level(decode_up, field, 1),
                0: _per_level(decode_up, field, 0),
            }
            total = _sum([*levels.values(), prefill])
            bound = bound_here if where == "here" else bound_h100
            row[where] = dict(
                levels={str(k): v for k, v in levels.items()},
                total=total,
                x_bound=None if total is None or not bound else total / bound,
            )
        h100_total = row["h100"]["total"]
        row["x_target"] = None if h100_total is None else h100_total / TARGET_SECONDS
        last = previous["here"]["total"] if previous is not None else None
        row["gain"] = None if last is None or row["here"]["total"] is None else last / row["here"]["total"]
        rows.append(row)
        previous = row
    return rows


def overlap_row(records: Sequence[Record], rows: list[Record]) -> Record | None:
    """Levels 1 and 0 at once (estimated from section G) applied to the fastest complete lever (the
    Triton rows are alternatives, not steps on top of the compiled one): level 1 runs beside the
    first quarter of level 0, at G's interleaved rate; the rest of level 0 alone."""
    overlap = latest(records, "overlap", section="G")
    complete = [r for r in rows if r["here"]["total"] is not None]
    if overlap is None or not complete or not overlap.get("alone_steps_per_s"):
        return None
    alone = sum(overlap["alone_steps_per_s"]) / len(overlap["alone_steps_per_s"])
    together = float(overlap["together_steps_per_s_each"])
    n1, n0 = STEPS_PER_MINUTE[1], STEPS_PER_MINUTE[0]
    factor = (n1 / together + (n0 - n1) / alone) / ((n0 + n1) / alone)
    base = min(complete, key=lambda r: float(r["here"]["total"]))
    row: Record = dict(
        stack=base["stack"],
        lever="+ levels 1 and 0 at once (est. from G)",
        path=base["path"],
        prefill_method=base["prefill_method"],
        prefill=base["prefill"],
        overlap_factor=factor,
    )
    for where in ("here", "h100"):
        levels = dict(base[where]["levels"])
        both = levels["1"] + levels["0"]
        levels["1"], levels["0"] = 0.0, both * factor
        total = _sum([*levels.values(), base["prefill"]])
        ratio = base[where]["x_bound"] / base[where]["total"] if base[where]["x_bound"] else None
        row[where] = dict(
            levels=levels, total=total, x_bound=None if ratio is None or total is None else total * ratio
        )
    row["x_target"] = row["h100"]["total"] / TARGET_SECONDS
    row["gain"] = base["here"]["total"] / row["here"]["total"]
    return row


def _layer_us(record: Record) -> tuple[float, float]:
    """µs per layer of a decode row, measured and projected to an H100 (the step's projection ratio)."""
    here = float(record["per_layer_ms"]) * 1e3
    return here, here * float(record["h100_ms_per_step"]) / float(record["ms_per_step"])


def decision_lines(records: Sequence[Record]) -> list[str]:
    """GPU-PLAN §4 step 6 read off the run: the upsampler's cost per layer on each graph path against
    UPSAMPLER_LAYER_LIMIT, whether the Triton blocks beat the best torch blocks, and the fastest
    Triton `linear` variant per shape."""
    paths = [path for _, path, _ in LEVERS if path.startswith("graph K=16")]
    rows = {p: r for p in paths if (r := latest(records, "decode", prior="upsampler", path=p)) is not None}
    kernels_alone = _linear_lines(records) + _mix_line(records) + _fused_line(records)
    if not rows:  # B's figures still say which tile and depth to choose
        return (
            ["", "Decision (GPU-PLAN §4 step 6): no upsampler decode rows", *kernels_alone]
            if kernels_alone
            else []
        )
    limit = UPSAMPLER_LAYER_LIMIT * 1e6
    lines = ["", f"Decision (GPU-PLAN §4 step 6): upsampler µs per layer, here | H100 (limit {limit:.0f} µs)"]
    for path, record in rows.items():
        here, h100 = _layer_us(record)
        lines.append(f"  {path:<46}{here:>8.1f} |{h100:>8.1f}{'  over' if h100 > limit else ''}")
    torch_rows = {p: _layer_us(r)[1] for p, r in rows.items() if p not in TRITON_PATHS}
    best = min(torch_rows, key=torch_rows.__getitem__) if COMPILED_PATH in torch_rows else None
    if best is None:  # the plain graph alone would make any fused kernel look good
        lines.append("  compiled blocks (the engine's CUDA default) not measured: no verdict on the blocks")
    else:
        verdict = (
            "over: hand-fused kernels wanted" if torch_rows[best] > limit else "within: torch blocks suffice"
        )
        lines.append(f"  best torch blocks: {best}, {torch_rows[best]:.1f} µs on an H100, {verdict}")
        if best == WHOLE_SLICE_PATH:
            lines.append(
                "  the whole-slice graph is the bench's own (the engine compiles per block): "
                "worth moving into the engine"
            )
    triton_rows = {p: _layer_us(rows[p])[1] for p in TRITON_PATHS if p in rows}
    tuned = latest(records, "tuned_tile", prior="upsampler")
    if best is not None and triton_rows:
        fastest = min(triton_rows, key=triton_rows.__getitem__)
        ratio = torch_rows[best] / triton_rows[fastest]
        choice = "triton" if ratio > 1 else "torch"
        how = {TRITON_PATH: "", PDL_PATH: " (with PDL)", TUNED_PATH: " (at B's fastest tile)"}[fastest]
        lines.append(
            f"  triton blocks{how}: {ratio:.2f}x the speed of the best torch blocks: kernels={choice} on CUDA"
        )
    if TRITON_PATH in triton_rows and PDL_PATH in triton_rows:
        gain = triton_rows[TRITON_PATH] / triton_rows[PDL_PATH]
        lines.append(f"  PDL: {gain:.2f}x the speed of the triton blocks without it: kernels.PDL={gain > 1}")
    if tuned is not None and TUNED_PATH in triton_rows:
        default = [triton_rows[p] for p in (TRITON_PATH, PDL_PATH) if p in triton_rows]
        versus = (
            f", {min(default) / triton_rows[TUNED_PATH]:.2f}x the default tile's speed" if default else ""
        )
        lines.append(
            f"  B's fastest tile {tuned['tile']}: LINEAR_BLOCK_N={tuned['block_n']} "
            f"LINEAR_BLOCK_K={tuned['block_k']} LINEAR_WARPS={tuned['warps']} "
            f"LINEAR_STAGES={tuned['stages']} LINEAR_DOT={tuned['dot']} "
            f"LINEAR_SPLIT_K={tuned.get('split_k', 1)} FUSED_ATTEND_KEYS={tuned.get('fused_attend_keys', 0)}"
            f"{versus}"
        )
    return lines + kernels_alone


def _linear_lines(records: Sequence[Record]) -> list[str]:
    """Per shape B timed: the fastest right tile, its weight TB/s as a share of A's read bandwidth and
    its programs (output strips) against the SMs, the default tile and cuBLAS's `addmm` at the same
    rows (B's gemm row). A shape far below the bandwidth with fewer programs than SMs is where a
    split-K `linear` would pay."""
    bandwidth = latest(records, "bandwidth", section="A") or {}
    read_tb_s = bandwidth.get("read_tb_s")
    sms = (latest(records, "env", section="A") or {}).get("sm_count")
    tiles = [r for r in records if r.get("kind") == "triton_linear"]
    lines = []
    for shape in dict.fromkeys((r["n_in"], r["n_out"]) for r in tiles):
        of_shape = [r for r in tiles if (r["n_in"], r["n_out"]) == shape]
        right = [r for r in of_shape if r.get("matches_torch")]
        wrong = [r["tile"] for r in of_shape if not r.get("matches_torch")]
        default = next((r for r in of_shape if r.get("default_tile")), None)
        line = f"  triton linear {shape[0]}x{shape[1]}: "
        if right:
            fastest = min(right, key=lambda r: float(r["us"]))
            line += f"fastest {fastest['tile']} {float(fastest['us']):.1f} µs"
            if read_tb_s:
                share = float(fastest["weight_tb_s"]) / float(read_tb_s)
                line += f", {float(fastest['weight_tb_s']):.2f} TB/s = {share:.0%} of read bandwidth"
            if sms:
                programs = fastest.get("programs", -(-shape[1] // int(fastest["block_n"])))
                line += f", {programs} programs on {sms} SMs"
            extra = [] if default is None else [f"default {float(default['us']):.1f} µs"]
            same = dict(m=fastest.get("m"), n_in=shape[0], n_out=shape[1], dtype=fastest.get("dtype"))
            gemm = latest(records, "gemm", role="layer", **same)
            extra += [] if gemm is None else [f"addmm {float(gemm['us']):.1f} µs"]
            line += f" ({'; '.join(extra)})" if extra else ""
        lines.append(line + (f"{'; ' if right else ''}WRONG results: {', '.join(wrong)}" if wrong else ""))
    return lines


def _mix_line(records: Sequence[Record]) -> list[str]:
    """Whether `attend`'s pipelined key loop pays: µs summed over the kinds B timed both ways."""
    by_kind: dict[tuple[str, str], dict[int, float]] = {}
    for r in records:
        if r.get("kind") == "triton_attend" and not r.get("fused"):
            by_kind.setdefault((r["prior"], r["attention"]), {})[int(r["mix_stages"])] = float(r["us"])
    both = [us for us in by_kind.values() if len(us) == 2 and 1 in us]
    if not both:
        return []
    depth = next(stages for stages in both[0] if stages != 1)
    piped = sum(us[depth] for us in both if depth in us)
    plain = sum(us[1] for us in both if depth in us)
    gain = plain / piped
    return [
        f"  attend, mix keys {depth} stages deep: {gain:.2f}x the speed unpipelined over {len(both)} kinds: "
        f"kernels.MIX_STAGES={depth if gain > 1 else 1}"
    ]


@dataclass(frozen=True)
class FusedVerdict:
    """B's verdict on one attention launch for a prior's kinds that can fuse: its speed against the
    faster two-launch form of each kind, weighted by the kind's layers; its µs a layer; the kinds; the
    FUSED_ATTEND_KEYS it was timed at."""

    gain: float
    us_per_layer: float
    kinds: int
    fused_keys: int

    @property
    def setting(self) -> int:
        """The FUSED_ATTEND_KEYS to run with: one launch only where it was faster."""
        return self.fused_keys if self.gain > 1 else 0


def fused_attention(records: Sequence[Record], prior: str) -> FusedVerdict | None:
    """B's verdict for `prior`, or None when B timed no kind of it both ways."""
    two: dict[str, float] = {}
    one: dict[str, float] = {}
    layers: dict[str, int] = {}
    fused_keys = 0
    for r in records:
        if r.get("kind") != "triton_attend" or r.get("prior") != prior:
            continue
        kind, us = r["attention"], float(r["us"])
        layers[kind] = int(r.get("layers", 1))
        if r.get("fused"):
            one[kind], fused_keys = us, int(r["fused_keys"])
        else:
            two[kind] = min(us, two.get(kind, us))
    both = [kind for kind in one if kind in two]
    if not both:
        return None
    fused = sum(one[kind] * layers[kind] for kind in both)
    gain = sum(two[kind] * layers[kind] for kind in both) / fused
    return FusedVerdict(gain, fused / sum(layers[kind] for kind in both), len(both), fused_keys)


def _fused_line(records: Sequence[Record]) -> list[str]:
    """Whether one attention launch pays where a kind reads few keys, over the upsampler's kinds (most
    of the time)."""
    verdict = fused_attention(records, "upsampler")
    if verdict is None:
        return []
    return [
        f"  attend in one launch: {verdict.gain:.2f}x the speed of two over the upsampler's {verdict.kinds} "
        f"kinds ({verdict.us_per_layer:.1f} µs a layer): kernels.FUSED_ATTEND_KEYS={verdict.setting}"
    ]


def _cell(value: float | None, width: int, suffix: str = "") -> str:
    return (
        f"{'-':>{width}}"
        if value is None
        else f"{value:>{width - len(suffix)}.{1 if value < 100 else 0}f}{suffix}"
    )


def table(records: Sequence[Record]) -> tuple[list[Record], str]:
    """All rows of I and their text table."""
    env = latest(records, "env", section="A") or {}
    lines = [
        f"I. Seconds per minute of audio, {3} samples, measured on {env.get('name', 'an unknown device')}"
        f"{' (DRY RUN: tiny sizes, not a measurement)' if env.get('dry_run') else ''}",
        f"   Projection: {FORMULA}. Prefill is compute-bound: kept as measured.",
        f"   Target: {TARGET_SECONDS:.0f} s on one H100.",
    ]
    head = (
        f"{'lever':<40}{'L2':>8}{'L1':>8}{'L0':>8}{'prefill':>9}{'total':>9}{'x bound':>9} |"
        f"{'H100 L2':>8}{'L1':>8}{'L0':>8}{'total':>9}{'x bound':>9}{'x 528s':>8}{'gain':>7}"
    )
    all_rows: list[Record] = []
    for stack in STACKS:
        rows = stack_rows(records, stack)
        extra = overlap_row(records, rows)
        if extra is not None:
            rows.append(extra)
        all_rows += rows
        lines += ["", f"{stack} stack", head, "-" * len(head)]
        for row in rows:
            here, h100 = row["here"], row["h100"]
            lines.append(
                f"{row['lever'][:39]:<40}"
                + "".join(_cell(here["levels"][k], 8) for k in ("2", "1", "0"))
                + _cell(row["prefill"], 9)
                + _cell(here["total"], 9)
                + _cell(here["x_bound"], 9, "x")
                + " |"
                + "".join(_cell(h100["levels"][k], 8) for k in ("2", "1", "0"))
                + _cell(h100["total"], 9)
                + _cell(h100["x_bound"], 9, "x")
                + _cell(row["x_target"], 8, "x")
                + _cell(row["gain"], 7, "x")
            )
    extras = [r for r in records if r.get("section") == "F" and r.get("kind") != "section"]
    if extras:
        parts = []
        for r in extras:
            if "s_per_min" in r:
                parts.append(f"{r['kind']} {sum(float(v) for v in r['s_per_min'].values()):.1f} s/min")
            elif "seconds" in r:
                parts.append(f"{r['kind']} {float(r['seconds']):.2f} s for 3 x 60 s")
        lines += ["", "Per-window extras (not in the totals): " + "; ".join(parts)]
    lines += decision_lines(records)
    checks = [r for r in records if r.get("section") == "H" and r.get("kind") == "check"]
    failed = [r for r in checks if r.get("tokens_equal") != r.get("steps")]
    lines += [
        "",
        f"Correctness (H): {len(checks) - len(failed)} of {len(checks)} checks with all tokens equal",
    ]
    lines += [
        f"  differs: {r['check']} [{r.get('prior')}, {r.get('dtype')}] first at {r.get('first_mismatch')}"
        for r in failed
    ]
    problems = [r for r in records if r.get("kind") in ("error", "skip")]
    if problems:
        lines += ["", f"Skipped or failed ({len(problems)}):"]
        lines += [
            f"  {r['section']} {r['kind']}: {r.get('what')}: {r.get('reason') or r.get('error')}"[:160]
            for r in problems
        ]
    return all_rows, "\n".join(lines)
