"""The Triton decode kernels build for real GPUs (bench/kernel_build.py), here, without one.

The interpreter the other kernel tests use accepts code that the GPU compiler would refuse and says
nothing of registers, so these build every specialization a decode step of each published prior
launches for an H100/H200 (sm_90) and an A100 (sm_80) down to SASS. They run in a subprocess: the
test session runs Triton interpreted (tests/conftest.py), and that is chosen at import.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.gpu_kernels import TILES
from bench.gpu_models import PRIORS

ROOT = Path(__file__).resolve().parents[2]


def _has_compiler() -> bool:
    spec = importlib.util.find_spec("triton")
    if spec is None or spec.origin is None:
        return False
    return (Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "ptxas").exists()


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not _has_compiler(), reason="needs triton with its CUDA backend's ptxas"),
]


def _run(*args: str, script: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"} | {"PYTHONPATH": str(ROOT)}
    env["TRITON_DEFAULT_FP_FUSION"] = "0"  # Triton 3.10's default: the kernels say what they want
    command = (
        [sys.executable, "-c", script] if script else [sys.executable, "-m", "bench.kernel_build", *args]
    )
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=500, check=False
    )


def test_every_kernel_a_decode_step_launches_builds_for_sm90_and_sm80_without_spilling() -> None:
    batches = (1, 3, 8, 16)  # every BLOCK_M `linear` takes: 2, 4, 8, 16
    proc = _run("--arch", "90", "80", "--batch", *map(str, batches), "--tiles", "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    builds: list[dict[str, Any]] = [row for row in lines if "kernel" in row]
    assert lines[-1] == {"launches_per_layer_step": dict.fromkeys(PRIORS, 6.0)}  # a block in six launches
    for arch in (90, 80):
        of_arch = [b for b in builds if b["arch"] == arch]
        for prior in PRIORS:
            kernels = {b["kernel"] for b in of_arch if prior in b["users"]}
            assert kernels == {"_linear_kernel", "_score_kernel", "_mix_kernel"}, (arch, prior)
        linear = [b for b in of_arch if b["kernel"] == "_linear_kernel" and "upsampler" in b["users"]]
        forms = {(b["constants"]["BLOCK_M"], b["constants"]["DOT"]) for b in linear}
        assert forms == {(m, False) for m in (2, 4, 8, 16)} | {(16, True)}
        tiles = {user for b in of_arch for user in b["users"] if user.startswith("tile ")}
        assert tiles == {f"tile {tile.name}" for tile in TILES}
        for b in of_arch:
            assert b["spill_ops"] == 0, b
            assert (b["tensor_core_ops"] > 0) == bool(b["constants"].get("DOT")), b
            assert 0 < b["registers"] <= 255 and b["num_warps"] in (4, 8)
            assert b["fp_fusion"] is True  # kernels.FP_FUSION, whatever triton's default
        every_linear = [b for b in of_arch if b["kernel"] == "_linear_kernel"]
        for b in every_linear:
            # both products stream W through the software pipeline: cp.async into shared memory,
            # STAGES - 1 tiles ahead; one stage loads each tile when it is used
            assert (b["async_copies"] > 0) == (b["constants"]["STAGES"] > 1), b
        assert {b["constants"]["STAGES"] for b in every_linear} >= {1, 3}
        mixes = [b for b in of_arch if b["kernel"] == "_mix_kernel"]
        for b in mixes:  # the keys' loop likewise, where v's rows are 16-byte aligned
            assert (b["async_copies"] > 0) == (b["constants"]["STAGES"] > 1), b
        stages = {p: {b["constants"]["STAGES"] for b in mixes if p in b["users"]} for p in PRIORS}
        assert stages == {"upsampler": {3}, "5b_lyrics": {1}, "1b_lyrics": {3}}  # 5b: 300-byte rows
    # the upsamplers' weights stream in 128-bit loads (their head dim, 480, keeps k and v rows aligned)
    upsampler = [b for b in builds if "upsampler" in b["users"]]
    assert all(b["loads"].get("128", 0) > 0 for b in upsampler)


def test_a_tile_too_big_for_the_registers_is_seen_to_spill() -> None:
    """The negative control: a 64×512 strip at 4 warps needs far more than 255 registers a thread."""
    script = """
import sys, torch
from bench import kernel_build
from bench.gpu_kernels import Tile
with Tile(64, 512, 4, False).chosen():
    rows = list(kernel_build.builds([90], torch.float16, [3], ["upsampler"]))
linear = [r for r in rows if r.kernel == "_linear_kernel" and not r.constants["DOT"]]
print(min(r.spill_ops for r in linear))
"""
    proc = _run(script=script)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout) > 0


def test_with_pdl_the_kernels_wait_on_the_previous_grid_on_sm90_and_launch_as_before_on_sm80() -> None:
    proc = _run("--arch", "90", "80", "--pdl", "--priors", "upsampler", "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    builds = [row for row in map(json.loads, proc.stdout.splitlines()) if "kernel" in row]
    assert {b["kernel"] for b in builds} == {"_linear_kernel", "_score_kernel", "_mix_kernel"}
    assert all(b["pdl"] == (b["arch"] == 90) and b["constants"]["PDL"] == (b["arch"] == 90) for b in builds)
    assert all(b["spill_ops"] == 0 for b in builds)


def test_fused_attention_builds_without_spilling_where_a_kind_reads_few_keys() -> None:
    """`--fused-attention`: every upsampler kind (64 or 128 keys) in one launch, five a layer; the kinds
    over 128 keys (1b_lyrics' prime and dense) and 5b_lyrics' unaligned 300-byte rows keep their two."""
    proc = _run("--arch", "90", "80", "--fused-attention", "--json")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    builds = [row for row in lines if "kernel" in row]
    kernels = {p: {b["kernel"] for b in builds if p in b["users"]} for p in PRIORS}
    assert kernels["upsampler"] == {"_linear_kernel", "_attend_kernel"}
    assert kernels["1b_lyrics"] == {"_linear_kernel", "_attend_kernel", "_score_kernel", "_mix_kernel"}
    assert kernels["5b_lyrics"] == {"_linear_kernel", "_score_kernel", "_mix_kernel"}
    per_layer = lines[-1]["launches_per_layer_step"]
    assert (per_layer["upsampler"], per_layer["5b_lyrics"]) == (5.0, 6.0) and 5.0 < per_layer[
        "1b_lyrics"
    ] < 5.2
    fused = [b for b in builds if b["kernel"] == "_attend_kernel"]
    assert {b["constants"]["KEYS"] for b in fused} == {64, 128}
    assert all(b["spill_ops"] == 0 for b in builds)
