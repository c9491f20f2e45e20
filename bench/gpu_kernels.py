"""B: the engine's Triton kernels (`sampler/jukebox/kernels.py`) alone, at published shapes. Skipped
where the kernels cannot run (`bench/gpu.py`'s `needs_triton`).

* `linear` (LayerNorm prologue + GEMV) per tile, with the broadcast sum and with `tl.dot`, against the
  `gemm` rows' `addmm`: which streams the weights best decides `LINEAR_BLOCK_N`, `LINEAR_BLOCK_K`,
  `LINEAR_WARPS`, `LINEAR_STAGES`, `LINEAR_DOT` and `LINEAR_SPLIT_K` (GPU-PLAN §4 step 6). On sm_90
  and later the default tile is timed again with programmatic dependent launch (`kernels.PDL`).
* `fastest_tile`: the tile these rows time fastest over a prior's layer (its four `linear` shapes), for
  section C's "B's fastest tile" row: the decode step at the tile B would choose, in the same run.
* `attend` (scores + mix) for every attention kind of each measured prior, mid-window, its cache
  rotated past the L2 like a decode step meets it: µs per layer and the k, v bytes read per second,
  so a layer's attention shows against its weight streaming (the ~13 µs of GPU-PLAN §4 step 6).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from bench.gpu_context import Context
from bench.gpu_micro import LAYER_GEMMS, ROTATE_BYTES, device_ms, graphed
from bench.gpu_models import PRIORS, build_prior, prior_config
from sampler.jukebox.prior import JukeboxPrior
from sampler.jukebox.transformer import ATTN_NAMES, CROSS, GEOMETRIES, LAYER_NORM_EPS, TransformerConfig


@dataclass(frozen=True)
class Tile:
    """A way `linear` can run: its program's BLOCK_N × BLOCK_K strip of W, its warps, its product, how
    many K tiles Triton's pipeliner keeps in flight, whether it launches with PDL (`kernels.PDL`) and
    the parts it splits K into where its strips leave SMs idle (`kernels.LINEAR_SPLIT_K`); and, for a
    decode row, whether attention runs in one launch where it can (`kernels.FUSED_ATTEND_KEYS`)."""

    block_n: int
    block_k: int
    warps: int
    dot: bool
    stages: int = 3
    pdl: bool = False
    split_k: int = 1
    fused_attend_keys: int = 0

    @property
    def name(self) -> str:
        stages = "" if self.stages == 3 else f"s{self.stages}"
        flags = (" dot" if self.dot else "") + (" pdl" if self.pdl else "")
        flags += f" split{self.split_k}" if self.split_k > 1 else ""
        flags += " fused-attend" if self.fused_attend_keys else ""
        return f"{self.block_n}x{self.block_k}w{self.warps}{stages}{flags}"

    def fields(self) -> dict[str, Any]:
        """The tile as a record's fields: each setting, and its name as `tile`."""
        return {**dataclasses.asdict(self), "tile": self.name}

    @classmethod
    def default(cls) -> Tile:
        from sampler.jukebox import kernels

        return cls(**{field: getattr(kernels, constant) for field, constant in _KERNEL_CONSTANTS.items()})

    @contextlib.contextmanager
    def chosen(self) -> Iterator[None]:
        """`linear` launches with this tile (it reads the tile at each launch) until the block ends."""
        from sampler.jukebox import kernels

        with contextlib.ExitStack() as settings:
            for field, constant in _KERNEL_CONSTANTS.items():
                settings.enter_context(_set(kernels, constant, getattr(self, field)))
            yield


# Each field of a Tile and the `kernels` module constant it sets.
_KERNEL_CONSTANTS = {
    "block_n": "LINEAR_BLOCK_N",
    "block_k": "LINEAR_BLOCK_K",
    "warps": "LINEAR_WARPS",
    "dot": "LINEAR_DOT",
    "stages": "LINEAR_STAGES",
    "pdl": "PDL",
    "split_k": "LINEAR_SPLIT_K",
    "fused_attend_keys": "FUSED_ATTEND_KEYS",
}


@contextlib.contextmanager
def _set(module: ModuleType, name: str, value: Any) -> Iterator[None]:
    """`module.name` is `value` (read at each launch: captured with it, replayed within) until the end."""
    previous = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, previous)


# (BLOCK_N, BLOCK_K, warps) tried, each with both products at Triton's default pipeline depth, then
# deeper pipelines of both and one tile unpipelined (stages 1: each K tile of W loaded when it is used, as
# the broadcast sum did before its loop went through the pipeliner); the kernels' default is among them.
# The 8-warp, long and deep tiles keep more of W in flight per multiprocessor. None spills registers at
# ROWS rows on an sm_80 or sm_90 GPU (`python -m bench.kernel_build --tiles`, checked by
# tests/bench/test_kernel_build.py).
_STRIPS = (
    (16, 64, 4),
    (32, 64, 4),
    (64, 64, 4),
    (32, 128, 4),
    (16, 128, 4),
    (32, 128, 8),
    (16, 256, 8),
    (32, 256, 8),
    (16, 512, 8),
)
TILES = (
    *(Tile(block_n, block_k, warps, dot) for block_n, block_k, warps in _STRIPS for dot in (False, True)),
    Tile(32, 64, 4, True, stages=6),
    Tile(16, 128, 4, True, stages=6),
    Tile(32, 128, 4, True, stages=5),
    Tile(16, 256, 8, True, stages=5),
    Tile(32, 128, 8, False, stages=5),
    Tile(16, 256, 8, False, stages=5),
    Tile(16, 512, 8, False, stages=4),
    Tile(32, 64, 4, False, stages=1),
    # split K where the strips leave SMs idle (at 32 columns: every upsampler shape, 5b's c_attn)
    Tile(32, 64, 4, False, split_k=2),
    Tile(32, 64, 4, False, split_k=3),
    Tile(32, 64, 4, False, split_k=4),
    Tile(16, 256, 8, False, stages=5, split_k=2),
    Tile(16, 128, 4, True, stages=6, split_k=2),
    Tile(32, 128, 4, True, stages=5, split_k=4),
)
# The tiles the dry run times: four, then a split one, so that the split's two launches run on the CPU.
DRY_RUN_TILES = (*TILES[:4], next(tile for tile in TILES if tile.split_k > 1))
ROWS = 3  # a job's samples
# Seconds (GPU, dry run) of the tiles' first shape (with their builds) and of each later one.
FIRST_SHAPE_S = (45.0, 15.0)
NEXT_SHAPE_S = (8.0, 8.0)


def triton_linear_tiles(ctx: Context) -> None:
    """µs and weight TB/s of LN + GEMV + bias for ROWS rows, each tile, weights rotated past the L2."""
    from sampler.jukebox import kernels

    if ctx.dry_run:  # a few tiles at the tiny upsampler's layer, which C's tuned row then decodes with
        spec = PRIORS["upsampler"]
        tiny = build_prior(spec, dry_run=True, device=torch.device("meta"), dtype=ctx.dtype, layers=range(1))
        shapes, tiles = list(dict.fromkeys(layer_shapes(tiny))), DRY_RUN_TILES
    else:
        shapes, tiles = list(LAYER_GEMMS), TILES
    if kernels.pdl_capable(ctx.device):  # the default tile again, each launch overlapping the last's tail
        tiles = (*tiles, dataclasses.replace(Tile.default(), pdl=True))
    # one row per shape, the upsampler's first: a short budget still decides its tile. The first row
    # builds every tile's kernels (about a second each on a GPU), the others only time them.
    for index, (n_in, n_out) in enumerate(shapes):
        estimate = ctx.seconds(*FIRST_SHAPE_S) if index == 0 else ctx.seconds(*NEXT_SHAPE_S)
        body = functools.partial(_shape, ctx, kernels, n_in, n_out, tiles)
        ctx.row("B", f"triton linear tiles {n_in}x{n_out}", estimate, body)


def layer_shapes(prior: JukeboxPrior) -> list[tuple[int, int]]:
    """(K, N) of each `linear` one residual block of `prior` launches: c_attn, its c_proj, c_fc, c_proj."""
    weights = prior.prior.transformer._blocks[0].static_weights()
    return [(int(weights[i].shape[0]), int(weights[i].shape[1])) for i in (2, 4, 8, 10)]


@dataclass(frozen=True)
class TileChoice:
    """The tile B timed fastest over a layer's shapes, and the µs of one layer's `linear`s at it and at
    the kernels' default tile (None: the default was not timed at every shape)."""

    tile: Tile
    layer_us: float
    default_layer_us: float | None


def fastest_tile(
    records: Sequence[dict[str, Any]], shapes: Sequence[tuple[int, int]], dtype: torch.dtype
) -> TileChoice | None:
    """Among the tiles B timed in `dtype` at every one of `shapes` with results that match torch's
    (without PDL, a launch option chosen apart), the one whose µs summed over `shapes` is least; None
    when no tile was timed (and right) at all of them."""
    timed: dict[Tile, dict[tuple[int, int], float]] = {}
    for r in records:
        if r.get("kind") != "triton_linear" or r.get("dtype") != str(dtype) or r.get("pdl"):
            continue
        if not r.get("matches_torch", False):  # a wrong tile is never chosen, however fast
            continue
        tile = Tile(
            r["block_n"], r["block_k"], r["warps"], r["dot"], r["stages"], split_k=r.get("split_k", 1)
        )
        timed.setdefault(tile, {})[(r["n_in"], r["n_out"])] = float(r["us"])
    layer_us = {
        tile: sum(us[shape] for shape in shapes)
        for tile, us in timed.items()
        if all(shape in us for shape in shapes)
    }
    if not layer_us:
        return None
    best = min(layer_us, key=layer_us.__getitem__)
    return TileChoice(best, layer_us[best], layer_us.get(dataclasses.replace(Tile.default(), pdl=False)))


# A tile whose `linear` parts from torch's by more than this (max |difference| over max |torch|) is
# recorded as wrong and never chosen: half precision rounds the output at 2^-11 relative, a missed or
# doubled K tile is off by tens of percent.
TILE_TOLERANCE = 1e-2


def _unit_norm(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ones_like(x[0], dtype=torch.float32), torch.zeros_like(x[0], dtype=torch.float32)


def _calls(kernels: ModuleType, x: torch.Tensor, weights: list[torch.Tensor], bias: torch.Tensor) -> None:
    norm = _unit_norm(x)
    for weight in weights:
        kernels.linear(x, weight, bias, norm=norm)


def _error(kernels: ModuleType, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> float:
    """How far `linear` at the chosen tile is from torch: LayerNorm rows rounded to x's dtype (as torch
    rounds them before its product), the product and bias in fp32; max |difference| over max |torch|."""
    got = kernels.linear(x, weight, bias, norm=_unit_norm(x)).float()
    rows = torch.nn.functional.layer_norm(x.float(), (x.shape[1],), eps=LAYER_NORM_EPS).to(x.dtype)
    want = rows.float() @ weight.float() + bias.float()
    return float((got - want).abs().max() / want.abs().max())


def _shape(ctx: Context, kernels: ModuleType, n_in: int, n_out: int, tiles: tuple[Tile, ...]) -> None:
    weight_bytes = n_in * n_out * torch.empty(0, dtype=ctx.dtype).element_size()
    copies = 2 if ctx.dry_run else min(128, max(2, math.ceil(ROTATE_BYTES / weight_bytes)))
    weights = [torch.randn(n_in, n_out, device=ctx.device, dtype=ctx.dtype) for _ in range(copies)]
    bias = torch.randn(n_out, device=ctx.device, dtype=ctx.dtype)
    x = torch.randn(ROWS, n_in, device=ctx.device, dtype=ctx.dtype)
    calls = functools.partial(_calls, kernels, x, weights, bias)
    default = Tile.default()
    for tile in tiles:
        with tile.chosen():  # the tile is read when a call launches: captured with it, replayed within
            times = device_ms(ctx, graphed(ctx, calls), 1 if ctx.dry_run else 5, warmup=1)
            error = _error(kernels, x, weights[0], bias)
            strips, parts = kernels.linear_grid(n_in, n_out, kernels.multiprocessors(ctx.device))
        ms = statistics.median(times) / copies
        ctx.emit(
            "B",
            "triton_linear",
            m=ROWS,
            n_in=n_in,
            n_out=n_out,
            **tile.fields(),
            default_tile=tile == default,
            programs=strips * parts,
            k_parts=parts,
            dtype=ctx.dtype,
            in_graph=ctx.capture,
            us=ms * 1e3,
            weight_tb_s=weight_bytes / (ms / 1e3) / 1e12,
            error=error,
            matches_torch=error <= TILE_TOLERANCE,
        )


def triton_attention(ctx: Context) -> None:
    """µs of `attend` for ROWS samples at every attention kind of each measured prior (full depth)."""
    from sampler.jukebox import kernels

    for name, spec in PRIORS.items():
        config = prior_config(spec, ctx.dry_run).transformer_config()
        for kind in dict.fromkeys(config.attn_funcs):
            _attention(ctx, kernels, name, config, kind)


def _attention(ctx: Context, kernels: ModuleType, prior: str, config: TransformerConfig, kind: int) -> None:
    heads, d = config.heads, config.head_dim
    geometry = GEOMETRIES[kind](config.block_ctx, config.prime_window, config.encoder_len)
    shape = geometry.cache_shape(ROWS, heads, config.seq_len, d)
    slots = math.prod(shape[2:-1])
    # mid-window and mid-block, where a decode step meets the average key count
    pos = torch.tensor(config.seq_len // 2 + config.block_ctx // 2, device=ctx.device)
    read = geometry.static_read(pos, slots, torch.arange(slots, device=ctx.device))
    cross = kind == CROSS
    kv_bytes = 2 * ROWS * heads * slots * d * torch.empty(0, dtype=ctx.dtype).element_size()
    copies = 2 if ctx.dry_run else min(128, max(2, math.ceil(ROTATE_BYTES / kv_bytes)))
    caches = [
        tuple(torch.randn(ROWS * heads, slots, d, device=ctx.device, dtype=ctx.dtype) for _ in range(2))
        for _ in range(copies)
    ]
    qkv = torch.randn(ROWS, (1 if cross else 3) * heads * d, device=ctx.device, dtype=ctx.dtype)

    def calls() -> None:
        for k_flat, v_flat in caches:
            kernels.attend(qkv, k_flat, v_flat, read, heads, cross)

    keys = slots if read.index is None else read.index.shape[0]
    # the mix's key loop at the kernels' pipeline depth and unpipelined, to say whether the depth pays
    # (once where the kernels never pipeline these rows); then in one launch, where the kind can be
    forms = [(stages, 0) for stages in dict.fromkeys((kernels.mix_stages(d, ctx.dtype), 1))]
    with _set(kernels, "FUSED_ATTEND_KEYS", kernels.FUSED_MAX_KEYS):
        fusable = kernels.fused_attend(keys, d, ctx.dtype)
    forms += [(kernels.MIX_STAGES, kernels.FUSED_MAX_KEYS)] if fusable else []
    for stages, fused_keys in forms:
        with _set(kernels, "MIX_STAGES", stages), _set(kernels, "FUSED_ATTEND_KEYS", fused_keys):
            times = device_ms(ctx, graphed(ctx, calls), 1 if ctx.dry_run else 5, warmup=1)
        ms = statistics.median(times) / copies
        ctx.emit(
            "B",
            "triton_attend",
            prior=prior,
            attention=ATTN_NAMES[kind],
            layers=config.attn_funcs.count(kind),
            rows=ROWS * heads,
            head_dim=d,
            keys=keys,
            mix_stages=stages,
            fused=fused_keys > 0,
            fused_keys=fused_keys,
            dtype=ctx.dtype,
            in_graph=ctx.capture,
            us=ms * 1e3,
            kv_tb_s=kv_bytes * keys / slots / (ms / 1e3) / 1e12,
        )
