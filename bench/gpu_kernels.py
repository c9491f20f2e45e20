"""B: the engine's Triton `linear` (LayerNorm prologue + GEMV, `sampler/jukebox/kernels.py`) at the
published layer shapes, per tile, against the `gemm` rows' `addmm`: which tile streams the weights
best decides `LINEAR_BLOCK_N` / `LINEAR_BLOCK_K` (GPU-PLAN §4 step 6). Skipped where the kernels
cannot run (`bench/gpu.py`'s `needs_triton`)."""

from __future__ import annotations

import functools
import math
import statistics
from types import ModuleType

import torch

from bench.gpu_context import Context
from bench.gpu_micro import DRY_SHRINK, LAYER_GEMMS, ROTATE_BYTES, device_ms, graphed

# (BLOCK_N, BLOCK_K) tried; the kernels' default is among them
TILES = ((16, 64), (32, 64), (64, 64), (32, 128), (16, 128))
ROWS = 3  # a job's samples


def triton_linear_tiles(ctx: Context) -> None:
    """µs and weight TB/s of LN + GEMV + bias for ROWS rows, each tile, weights rotated past the L2."""
    from sampler.jukebox import kernels

    shapes, tiles = (LAYER_GEMMS[:1], TILES[:2]) if ctx.dry_run else (LAYER_GEMMS, TILES)
    for n_in, n_out in shapes:
        if ctx.dry_run:
            n_in, n_out = n_in // DRY_SHRINK, n_out // DRY_SHRINK
        _shape(ctx, kernels, n_in, n_out, tiles)


def _calls(kernels: ModuleType, x: torch.Tensor, weights: list[torch.Tensor], bias: torch.Tensor) -> None:
    norm = (torch.ones_like(x[0], dtype=torch.float32), torch.zeros_like(x[0], dtype=torch.float32))
    for weight in weights:
        kernels.linear(x, weight, bias, norm=norm)


def _shape(
    ctx: Context, kernels: ModuleType, n_in: int, n_out: int, tiles: tuple[tuple[int, int], ...]
) -> None:
    weight_bytes = n_in * n_out * torch.empty(0, dtype=ctx.dtype).element_size()
    copies = 2 if ctx.dry_run else min(128, max(2, math.ceil(ROTATE_BYTES / weight_bytes)))
    weights = [torch.randn(n_in, n_out, device=ctx.device, dtype=ctx.dtype) for _ in range(copies)]
    bias = torch.zeros(n_out, device=ctx.device, dtype=ctx.dtype)
    x = torch.randn(ROWS, n_in, device=ctx.device, dtype=ctx.dtype)
    calls = functools.partial(_calls, kernels, x, weights, bias)
    for block_n, block_k in tiles:
        default = kernels.LINEAR_BLOCK_N, kernels.LINEAR_BLOCK_K
        kernels.LINEAR_BLOCK_N, kernels.LINEAR_BLOCK_K = block_n, block_k
        try:  # the tile is read when a call launches: captured with it, replayed within
            times = device_ms(ctx, graphed(ctx, calls), 1 if ctx.dry_run else 5, warmup=1)
        finally:
            kernels.LINEAR_BLOCK_N, kernels.LINEAR_BLOCK_K = default
        ms = statistics.median(times) / copies
        ctx.emit(
            "B",
            "triton_linear",
            m=ROWS,
            n_in=n_in,
            n_out=n_out,
            block_n=block_n,
            block_k=block_k,
            default_tile=(block_n, block_k) == default,
            dtype=ctx.dtype,
            in_graph=ctx.capture,
            us=ms * 1e3,
            weight_tb_s=weight_bytes / (ms / 1e3) / 1e12,
        )
