"""Hand-fused Triton kernels for the static decode step: one residual block in six launches.

GPU-PLAN.md §4 step 6. At batch ≤ 4 a decode step streams each layer's weights once; what costs is
the number of kernels per layer (about 27 eager, 8 after inductor). These make it six (five with
`FUSED_ATTEND_KEYS`, seven to ten with `LINEAR_SPLIT_K`):

* `linear` (four of the six): y = act(LN(x) @ W + b) + r in one pass, for a job's few rows (M ≤
  MAX_ROWS; 3 by default): every program normalises those rows itself (the LayerNorm prologue, fp32
  statistics like `torch.layer_norm`), reads a strip of W once, several K tiles ahead through Triton's
  software pipeline (multiplying on the CUDA cores, or on the tensor cores with `LINEAR_DOT`), and
  adds bias, quick-GELU and the residual in its epilogue. Where a narrow output has fewer strips
  than the GPU has multiprocessors, `LINEAR_SPLIT_K` > 1 also splits K: each program sums its part of
  K, and a second launch adds the parts in their order and runs the epilogue;
* `attend` (two): the decode attention of every attention kind. A decode step has few (batch ×
  heads) rows, 3 at the upsamplers' single head, so one program per row would leave a GPU's other
  multiprocessors idle while three stream the keys. Attention is split where it parallelises without
  a split reduction: `_score_kernel` scores a tile of keys per program (and writes the new k, v to
  their slot), `_mix_kernel` takes a strip of head dims per program, softmaxes the row's scores and
  applies them to v, its keys several tiles ahead through Triton's software pipeline. With
  `FUSED_ATTEND_KEYS`, a kind that reads few keys (every kind of the upsamplers: 64 or 128) runs in
  one launch instead, `_attend_kernel`: each strip's program scores all of the row's keys itself.

Every sum has a fixed order (no atomics; a split K's parts are added in part order by one program per
output), so a resumed job redraws the same codes on the same GPU. Everything accumulates in fp32 and
rounds once at the store: in fp32 the results equal `static_block_step`'s to float rounding
(tests/sampler/jukebox/test_kernels.py, on the CPU through Triton's interpreter); in half precision
they round less often than the torch ops do.

With `PDL` on, a GPU of compute capability 9.0 or later launches each kernel while the one before
it still runs (programmatic dependent launch): the kernel lets its successor launch at once and waits
for its predecessor before it reads anything, so the results are the same.

Triton is optional: on a CUDA build of torch it comes with torch; elsewhere the kernels run only
under `TRITON_INTERPRET=1` (set before this module is imported), which is how the tests run them.
`unavailable(device, rows)` says why they cannot run (no triton, no CUDA, a batch over MAX_ROWS), and
the decoder then stays on the torch step.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from sampler.jukebox.transformer import (
    GELU_SCALE,
    LAYER_NORM_EPS,
    MASK_VALUE,
    StaticRead,
    _score_scale,
)

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU-only install without triton: `unavailable` says so
    triton = None
try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # no triton, or one from before grid dependency control: no PDL
    gdc_launch_dependents = gdc_wait = None

# The oldest Triton with what the kernels use (`triton.knobs`, the `launch_pdl` launch option):
# an older one (torch 2.5's Triton 3.1, say) is reported by `unavailable`, never launched.
MIN_TRITON = "3.4"
TRITON_RECENT = triton is not None and hasattr(triton, "knobs")
# The interpreter is chosen when the kernels are decorated, at import: a later TRITON_INTERPRET
# does not make these kernels run on the CPU.
INTERPRETED = TRITON_RECENT and bool(triton.knobs.runtime.interpret)

# The largest batch (rows) `linear` takes: each program keeps every row's normalised inputs.
MAX_ROWS = 16
# Tiles. A `linear` program owns LINEAR_BLOCK_N output columns and streams their strip of W in
# LINEAR_BLOCK_K rows. A scoring program takes as many keys as keep its tile (keys × head dim, padded
# to powers of two) within ATTEND_TILE_ELEMENTS, at most ATTEND_MAX_KEYS; a mixing program owns
# MIX_BLOCK_D head dims and walks the keys MIX_BLOCK_KEYS at a time. Not tuned: the GPU run measures
# them (bench/gpu_kernels.py times the linear tiles and each attention kind).
LINEAR_BLOCK_N = 32
LINEAR_BLOCK_K = 64
# The warps of a `linear` program: more keep more of W's loads in flight on its multiprocessor. Its
# stages: the depth of Triton's software pipeline over K, which keeps STAGES - 1 tiles of W (and of the
# rows) on their way into shared memory (cp.async) while it multiplies one, in both forms; 1 loads each
# tile when it is used. 3 is Triton's own default on NVIDIA GPUs. The interpreter ignores it.
LINEAR_WARPS = 4
LINEAR_STAGES = 3
# How `linear` multiplies a K tile: False, an fp32 broadcast-and-sum on the CUDA cores; True, `tl.dot`
# on the tensor cores with the rows padded to DOT_ROWS (its least M), which also lets Triton pipeline
# the weight loads. Which streams the weights faster is for the GPU run to say (bench B times both).
LINEAR_DOT = False
DOT_ROWS = 16
# Split-K: a `linear` whose output strips (N / LINEAR_BLOCK_N) are fewer than the GPU's multiprocessors
# (every upsampler linear: 45 or 60 strips on an H100's 132 SMs) leaves the rest idle while it streams W. With
# LINEAR_SPLIT_K > 1 such a launch splits K into that many parts (whole K tiles each, at most one part
# per K tile): strips × parts programs each write their part's fp32 sums, and a second launch adds the
# parts in order. 1 never splits. Whether the extra launch pays is for the GPU run to say (bench B's
# split tiles); the rounding differs from the unsplit sum's, so changing it changes a resumed job's codes.
LINEAR_SPLIT_K = 1
ATTEND_TILE_ELEMENTS = 4096
ATTEND_MAX_KEYS = 32
MIX_BLOCK_KEYS = 64
MIX_BLOCK_D = 64
# The depth of the software pipeline over a mixing program's keys (their scores, slots and v rows on
# their way while it weighs one tile): a dense layer's thousands of keys are otherwise one latency per
# tile. Only where v's rows are 16-byte aligned: cp.async cannot copy 5b_lyrics' 300-byte rows (head
# dim 150) in more than 2 bytes at a time, and pipelining just its scores spills registers on sm_90.
# 1 loads each tile when it is used; the interpreter ignores it.
MIX_STAGES = 3
# One launch for the attention of a kind that reads at most this many keys (0: always two), where its
# k, v rows are 16-byte aligned (not 5b_lyrics' head dim 150 in half precision). Each of a
# row's head-dim strips then scores every key itself (the full q·k, FUSED_CHUNK_D dims at a time: the
# keys are read once per strip, from the L2 after the first) before it softmaxes and mixes its strip,
# and writes its strip of the new k, v. A launch less per layer against redundant scoring: for the GPU
# run to say (bench B's fused `attend` rows), so it is off. The keys sit in registers: at most 128 keys
# builds without spilling (`python -m bench.kernel_build --fused-attention`).
FUSED_ATTEND_KEYS = 0
FUSED_MAX_KEYS = 128
FUSED_CHUNK_D = 32
# Programmatic dependent launch (Hopper and later): each kernel lets the next one launch at once and
# waits, before its first read, for the one before it to finish, so a launch and its ramp-up overlap
# the previous kernel's tail instead of following it. The results are the same; whether it is faster
# inside the decoder's CUDA graphs is for the GPU run to say (bench C's "+ PDL" row), so it is off.
PDL = False
# Fused multiply-adds on (one rounding for a·b + c), said at every launch: Triton 3.10 turns its
# default off, and an upgrade of triton must not change the kernels' rounding (and a resumed job's
# codes) unasked.
FP_FUSION = True


def unavailable(device: torch.device, rows: int = 1) -> str | None:
    """Why the kernels cannot run on `device` for a batch of `rows` samples, or None when they can."""
    if triton is None:
        return "triton is not installed"
    if not TRITON_RECENT:
        return f"triton {triton.__version__} is older than the kernels need ({MIN_TRITON})"
    if rows > MAX_ROWS:
        return f"they take at most {MAX_ROWS} samples at once, this batch has {rows}"
    if device.type == "cuda":
        return None if not INTERPRETED else "TRITON_INTERPRET=1 runs Triton on the CPU only"
    if device.type == "cpu" and INTERPRETED:
        return None
    return f"Triton kernels need a CUDA device (or TRITON_INTERPRET=1 on the CPU), not {device.type}"


def pdl_capable(device: torch.device) -> bool:
    """Whether `device` runs programmatic dependent launch: a CUDA GPU of compute capability 9.0 or later,
    with the kernels compiled (the interpreter has no grid dependencies)."""
    if gdc_wait is None or INTERPRETED or device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(device) >= (9, 0)


def _pdl(device: torch.device) -> bool:
    return PDL and pdl_capable(device)


if triton is not None:
    # tl.sum, tl.max and tl.zeros are themselves jitted functions, which Triton's interpreter
    # re-patches at every call (tens of ms each); tl.reduce with their combine functions and tl.full
    # compile to the same code and run in numpy under the interpreter.
    _SUM = tl.standard._sum_combine
    _MAX = tl.standard._elementwise_max

    @triton.jit
    def _rows_tile(
        X, LN_W, LN_B, rows, row_ok, stride_x, k0, K, mean, rstd, NORM: tl.constexpr, BLOCK_K: tl.constexpr
    ):
        """The rows' K tile at k0 in fp32, layer-normed with `mean`, `rstd` where NORM."""
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        x = tl.load(
            X + rows[:, None] * stride_x + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0
        )
        xf = x.to(tl.float32)
        if NORM:
            gamma = tl.load(LN_W + ks, mask=k_ok, other=0.0).to(tl.float32)
            beta = tl.load(LN_B + ks, mask=k_ok, other=0.0).to(tl.float32)
            xf = (xf - mean[:, None]) * rstd[:, None] * gamma[None, :] + beta[None, :]
            # torch rounds the normalised rows to the input's dtype before the matrix product
            xf = xf.to(x.dtype).to(tl.float32)
        return xf

    @triton.jit
    def _epilogue(
        acc,
        B,
        R,
        Y,
        rows,
        cols,
        row_ok,
        col_ok,
        stride_r,
        stride_y,
        gelu_scale,
        GELU: tl.constexpr,
        RESIDUAL: tl.constexpr,
    ):
        """Y = act(acc + b) + r for the rows × cols tile of fp32 sums `acc`, rounded once at the store."""
        y = acc + tl.load(B + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        if GELU:
            y = y / (1.0 + tl.exp(-gelu_scale * y))
        out = row_ok[:, None] & col_ok[None, :]
        if RESIDUAL:
            y += tl.load(R + rows[:, None] * stride_r + cols[None, :], mask=out, other=0.0).to(tl.float32)
        tl.store(Y + rows[:, None] * stride_y + cols[None, :], y.to(Y.dtype.element_ty), mask=out)

    @triton.jit
    def _linear_kernel(
        X,
        LN_W,
        LN_B,
        W,
        B,
        R,
        Y,
        PARTIAL,
        M,
        K,
        N,
        k_per_part,
        stride_x,
        stride_r,
        stride_y,
        eps,
        gelu_scale,
        NORM: tl.constexpr,
        GELU: tl.constexpr,
        RESIDUAL: tl.constexpr,
        DOT: tl.constexpr,
        SPLIT: tl.constexpr,
        PDL: tl.constexpr,
        STAGES: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        rows = tl.arange(0, BLOCK_M)
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < M
        col_ok = cols < N
        # this program's part of K: all of it unless SPLIT (k_per_part is then whole K tiles)
        k_start = tl.program_id(1) * k_per_part
        k_end = tl.minimum(k_start + k_per_part, K)
        if not DOT:
            # W never changes: its first K tile is on its way while this program waits for the previous
            # kernel and normalises its rows (the tl.dot form leaves all of W's loads to the pipeliner)
            first_ks = k_start + tl.arange(0, BLOCK_K)
            w_first = tl.load(
                W + first_ks[:, None] * N + cols[None, :],
                mask=(first_ks < K)[:, None] & col_ok[None, :],
                other=0.0,
            )
        if PDL:  # the next kernel may launch now; this one reads no output of the last before it is done
            gdc_launch_dependents()
            gdc_wait()
        mean = tl.full([BLOCK_M], 0.0, tl.float32)
        rstd = tl.full([BLOCK_M], 1.0, tl.float32)
        if NORM:
            # the rows' mean, then their variance about it (two passes over K, as exact as LayerNorm)
            total = tl.full([BLOCK_M], 0.0, tl.float32)
            for k0 in range(0, K, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                inside = row_ok[:, None] & (ks[None, :] < K)
                x = tl.load(X + rows[:, None] * stride_x + ks[None, :], mask=inside, other=0.0)
                total += tl.reduce(x.to(tl.float32), 1, _SUM)
            mean = total / K
            squares = tl.full([BLOCK_M], 0.0, tl.float32)
            for k0 in range(0, K, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                inside = row_ok[:, None] & (ks[None, :] < K)
                x = tl.load(X + rows[:, None] * stride_x + ks[None, :], mask=inside, other=0.0)
                centred = tl.where(inside, x.to(tl.float32) - mean[:, None], 0.0)
                squares += tl.reduce(centred * centred, 1, _SUM)
            rstd = 1.0 / tl.sqrt(squares / K + eps)
        acc = tl.full([BLOCK_M, BLOCK_N], 0.0, tl.float32)
        if DOT:
            # the tensor-core product; fp32 inputs stay fp32 (no TF32), fp16/bf16 accumulate in fp32
            for k0 in tl.range(k_start, k_end, BLOCK_K, num_stages=STAGES):
                xf = _rows_tile(X, LN_W, LN_B, rows, row_ok, stride_x, k0, K, mean, rstd, NORM, BLOCK_K)
                ks = k0 + tl.arange(0, BLOCK_K)
                w = tl.load(
                    W + ks[:, None] * N + cols[None, :], mask=(ks < K)[:, None] & col_ok[None, :], other=0.0
                )
                acc += tl.dot(xf.to(w.dtype), w, input_precision="ieee")
        else:
            xf = _rows_tile(X, LN_W, LN_B, rows, row_ok, stride_x, k_start, K, mean, rstd, NORM, BLOCK_K)
            acc += tl.reduce(xf[:, :, None] * w_first.to(tl.float32)[None, :, :], 1, _SUM)
            # the later tiles through Triton's software pipeliner: STAGES - 1 tiles of W in flight
            for k0 in tl.range(k_start + BLOCK_K, k_end, BLOCK_K, num_stages=STAGES):
                xf = _rows_tile(X, LN_W, LN_B, rows, row_ok, stride_x, k0, K, mean, rstd, NORM, BLOCK_K)
                ks = k0 + tl.arange(0, BLOCK_K)
                w = tl.load(
                    W + ks[:, None] * N + cols[None, :], mask=(ks < K)[:, None] & col_ok[None, :], other=0.0
                )
                acc += tl.reduce(xf[:, :, None] * w.to(tl.float32)[None, :, :], 1, _SUM)
        if SPLIT:  # the part's sums, for `_linear_parts_kernel` to add in order
            out = row_ok[:, None] & col_ok[None, :]
            part = PARTIAL + tl.program_id(1).to(tl.int64) * M * N
            tl.store(part + rows[:, None] * N + cols[None, :], acc, mask=out)
        else:
            _epilogue(
                acc, B, R, Y, rows, cols, row_ok, col_ok, stride_r, stride_y, gelu_scale, GELU, RESIDUAL
            )

    @triton.jit
    def _linear_parts_kernel(
        PARTIAL,
        B,
        R,
        Y,
        M,
        N,
        parts,
        stride_r,
        stride_y,
        gelu_scale,
        GELU: tl.constexpr,
        RESIDUAL: tl.constexpr,
        PDL: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
    ):
        """A split `linear`'s second launch: its parts' fp32 sums added in part order, then the epilogue."""
        if PDL:
            gdc_launch_dependents()
            gdc_wait()
        rows = tl.arange(0, BLOCK_M)
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < M
        col_ok = cols < N
        out = row_ok[:, None] & col_ok[None, :]
        acc = tl.full([BLOCK_M, BLOCK_N], 0.0, tl.float32)
        for part in range(0, parts):
            acc += tl.load(PARTIAL + part * M * N + rows[:, None] * N + cols[None, :], mask=out, other=0.0)
        _epilogue(acc, B, R, Y, rows, cols, row_ok, col_ok, stride_r, stride_y, gelu_scale, GELU, RESIDUAL)

    @triton.jit
    def _score_kernel(
        QKV,
        KC,
        VC,
        WRITE,
        KEEP_OLD,
        INDEX,
        MASK,
        S,
        heads,
        slots,
        n_keys,
        stride_qkv,
        k_offset,
        v_offset,
        D,
        scale,
        mask_value,
        HAS_WRITE: tl.constexpr,
        HAS_KEEP: tl.constexpr,
        HAS_INDEX: tl.constexpr,
        HAS_MASK: tl.constexpr,
        PDL: tl.constexpr,
        BLOCK_KEYS: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        if PDL:
            gdc_launch_dependents()
            gdc_wait()
        row = tl.program_id(0)  # n·heads + h: the cache's flat row
        n = row // heads
        h = row % heads
        ds = tl.arange(0, BLOCK_D)
        d_ok = ds < D
        head = QKV + n * stride_qkv + h * D
        q = tl.load(head + ds, mask=d_ok, other=0.0).to(tl.float32)
        cache_row = row.to(tl.int64) * slots * D
        everywhere = ds * 0  # scalars are loaded as vectors: masks stay blocks of one shape
        if HAS_WRITE:
            slot = tl.load(WRITE + everywhere)
            new_k = tl.load(head + k_offset + ds, mask=d_ok, other=0.0)
            write_now = everywhere == 0  # every lane, unless the layer keeps the slot's old k, v
            if HAS_KEEP:
                write_now = write_now & (tl.load(KEEP_OLD + everywhere) == 0)
            # one program per row stores the new k, v; `_mix_kernel` (the next launch) reads that v
            if tl.program_id(1) == 0:
                new_v = tl.load(head + v_offset + ds, mask=d_ok, other=0.0)
                tl.store(KC + cache_row + slot * D + ds, new_k, mask=d_ok & write_now)
                tl.store(VC + cache_row + slot * D + ds, new_v, mask=d_ok & write_now)
        js = tl.program_id(1) * BLOCK_KEYS + tl.arange(0, BLOCK_KEYS)
        j_ok = js < n_keys
        if HAS_INDEX:
            key_slots = tl.load(INDEX + js, mask=j_ok, other=0)
        else:
            key_slots = js
        both = j_ok[:, None] & d_ok[None, :]
        k = tl.load(KC + cache_row + key_slots[:, None] * D + ds[None, :], mask=both, other=0.0)
        if HAS_WRITE:
            # the new key from registers: another program's store above need not be visible yet
            fresh = (key_slots[:, None] == slot[None, :]) & write_now[None, :]
            k = tl.where(fresh, new_k[None, :], k)
        scores = tl.reduce(k.to(tl.float32) * q[None, :], 1, _SUM) * scale
        if HAS_MASK:
            seen = tl.load(MASK + js, mask=j_ok, other=0) != 0
            scores = tl.where(seen, scores, mask_value)
        tl.store(S + row.to(tl.int64) * n_keys + js, scores, mask=j_ok)

    @triton.jit
    def _mix_kernel(
        S,
        VC,
        INDEX,
        EMPTY,
        OUT,
        heads,
        slots,
        n_keys,
        D,
        HAS_INDEX: tl.constexpr,
        HAS_EMPTY: tl.constexpr,
        PDL: tl.constexpr,
        STAGES: tl.constexpr,
        BLOCK_KEYS: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        if PDL:
            gdc_launch_dependents()
            gdc_wait()
        row = tl.program_id(0)
        n = row // heads
        h = row % heads
        ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        d_ok = ds < D
        scores_row = S + row.to(tl.int64) * n_keys
        cache_row = row.to(tl.int64) * slots * D
        # softmax as torch computes it: the row's maximum first, then exp(s - max) summed in key order
        best = tl.full([], float("-inf"), tl.float32)
        for j0 in range(0, n_keys, BLOCK_KEYS):
            js = j0 + tl.arange(0, BLOCK_KEYS)
            s = tl.load(scores_row + js, mask=js < n_keys, other=float("-inf"))
            best = tl.maximum(best, tl.reduce(s, 0, _MAX))
        total = tl.full([], 0.0, tl.float32)
        acc = tl.full([BLOCK_D], 0.0, tl.float32)
        for j0 in tl.range(0, n_keys, BLOCK_KEYS, num_stages=STAGES):
            js = j0 + tl.arange(0, BLOCK_KEYS)
            j_ok = js < n_keys
            p = tl.exp(tl.load(scores_row + js, mask=j_ok, other=float("-inf")) - best)
            if HAS_INDEX:
                key_slots = tl.load(INDEX + js, mask=j_ok, other=0)
            else:
                key_slots = js
            both = j_ok[:, None] & d_ok[None, :]
            v = tl.load(VC + cache_row + key_slots[:, None] * D + ds[None, :], mask=both, other=0.0)
            total += tl.reduce(p, 0, _SUM)
            acc += tl.reduce(p[:, None] * v.to(tl.float32), 0, _SUM)
        out = acc / total
        if HAS_EMPTY:
            out = tl.where(tl.load(EMPTY + ds * 0) != 0, 0.0, out)
        tl.store(OUT + n * (heads * D) + h * D + ds, out.to(OUT.dtype.element_ty), mask=d_ok)

    @triton.jit
    def _attend_kernel(
        QKV,
        KC,
        VC,
        WRITE,
        KEEP_OLD,
        INDEX,
        MASK,
        EMPTY,
        OUT,
        heads,
        slots,
        n_keys,
        stride_qkv,
        k_offset,
        v_offset,
        D,
        scale,
        mask_value,
        HAS_WRITE: tl.constexpr,
        HAS_KEEP: tl.constexpr,
        HAS_INDEX: tl.constexpr,
        HAS_MASK: tl.constexpr,
        HAS_EMPTY: tl.constexpr,
        PDL: tl.constexpr,
        KEYS: tl.constexpr,
        CHUNK_D: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """`_score_kernel` and `_mix_kernel` in one launch, for at most KEYS keys: program (row, strip)
        scores all the row's keys, softmaxes them and mixes v's strip of head dims."""
        if PDL:
            gdc_launch_dependents()
            gdc_wait()
        row = tl.program_id(0)
        n = row // heads
        h = row % heads
        head = QKV + n * stride_qkv + h * D
        cache_row = row.to(tl.int64) * slots * D
        js = tl.arange(0, KEYS)
        j_ok = js < n_keys
        if HAS_INDEX:
            key_slots = tl.load(INDEX + js, mask=j_ok, other=0)
        else:
            key_slots = js
        if HAS_WRITE:
            # the new k, v from registers wherever its slot is read: no program waits for another's store
            slot = tl.load(WRITE + js * 0)
            write_now = js == js  # every key's lane, unless the layer keeps the slot's old k, v
            if HAS_KEEP:
                write_now = write_now & (tl.load(KEEP_OLD + js * 0) == 0)
            fresh = (key_slots == slot) & write_now
        scores = tl.full([KEYS], 0.0, tl.float32)
        for d0 in range(0, D, CHUNK_D):
            dc = d0 + tl.arange(0, CHUNK_D)
            dc_ok = dc < D
            q = tl.load(head + dc, mask=dc_ok, other=0.0).to(tl.float32)
            k = tl.load(
                KC + cache_row + key_slots[:, None] * D + dc[None, :],
                mask=j_ok[:, None] & dc_ok[None, :],
                other=0.0,
            )
            if HAS_WRITE:
                new_k = tl.load(head + k_offset + dc, mask=dc_ok, other=0.0)
                k = tl.where(fresh[:, None], new_k[None, :], k)
            scores += tl.reduce(k.to(tl.float32) * q[None, :], 1, _SUM)
        scores = scores * scale
        if HAS_MASK:
            seen = tl.load(MASK + js, mask=j_ok, other=0) != 0
            scores = tl.where(seen, scores, mask_value)
        # softmax as torch computes it: the row's maximum first, then exp(s - max) summed
        scores = tl.where(j_ok, scores, float("-inf"))
        p = tl.exp(scores - tl.reduce(scores, 0, _MAX))
        total = tl.reduce(p, 0, _SUM)
        ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        d_ok = ds < D
        both = j_ok[:, None] & d_ok[None, :]
        v = tl.load(VC + cache_row + key_slots[:, None] * D + ds[None, :], mask=both, other=0.0)
        if HAS_WRITE:
            new_v = tl.load(head + v_offset + ds, mask=d_ok, other=0.0)
            v = tl.where(fresh[:, None], new_v[None, :], v)
            # each strip's program stores its strip of the new k, v (the next layer's launch reads them)
            slot_d = tl.load(WRITE + ds * 0)
            store = d_ok
            if HAS_KEEP:
                store = store & (tl.load(KEEP_OLD + ds * 0) == 0)
            tl.store(KC + cache_row + slot_d * D + ds, tl.load(head + k_offset + ds, mask=d_ok), mask=store)
            tl.store(VC + cache_row + slot_d * D + ds, new_v, mask=store)
        out = tl.reduce(p[:, None] * v.to(tl.float32), 0, _SUM) / total
        if HAS_EMPTY:
            out = tl.where(tl.load(EMPTY + ds * 0) != 0, 0.0, out)
        tl.store(OUT + n * (heads * D) + h * D + ds, out.to(OUT.dtype.element_ty), mask=d_ok)


def _aligned_rows(head_dim: int, dtype: torch.dtype) -> bool:
    """Whether k, v rows of `head_dim` in `dtype` are 16-byte aligned (vector loads, cp.async)."""
    return head_dim * torch.empty(0, dtype=dtype).element_size() % 16 == 0


def fused_attend(n_keys: int, head_dim: int, dtype: torch.dtype) -> bool:
    """Whether `attend` reads `n_keys` keys of `head_dim` in one launch: at most FUSED_ATTEND_KEYS, and
    rows 16-byte aligned (5b_lyrics' 300-byte rows load 2 bytes at a time, and its 128 keys spill)."""
    return n_keys <= min(FUSED_ATTEND_KEYS, FUSED_MAX_KEYS) and _aligned_rows(head_dim, dtype)


def mix_stages(head_dim: int, dtype: torch.dtype) -> int:
    """The mixing kernel's pipeline depth for v rows of `head_dim` in `dtype`: MIX_STAGES where the rows
    are 16-byte aligned, else 1."""
    return MIX_STAGES if _aligned_rows(head_dim, dtype) else 1


def _require() -> None:
    if triton is None:
        raise RuntimeError("triton is not installed")


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _power_of_two(n: int, least: int) -> int:
    """The smallest power of two ≥ n and ≥ least (Triton's block sizes)."""
    return max(least, 1 << (n - 1).bit_length())


# Where the interpreter runs the kernels there are no multiprocessors to fill: a split is taken wherever
# LINEAR_SPLIT_K asks for one, so that the tests on the CPU run it.
_NO_SM_LIMIT = 1 << 30


def multiprocessors(device: torch.device) -> int:
    """The SMs a launch on `device` can fill (the interpreter: no limit)."""
    if device.type != "cuda":
        return _NO_SM_LIMIT
    return _cuda_multiprocessors(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _cuda_multiprocessors(index: int) -> int:
    return int(torch.cuda.get_device_properties(index).multi_processor_count)


def linear_grid(k: int, n: int, sms: int) -> tuple[int, int]:
    """(strips, parts) of a `linear` from K to N on a GPU with `sms` multiprocessors: the output strips
    of LINEAR_BLOCK_N columns, and the parts K is split into (1: not split; see LINEAR_SPLIT_K)."""
    strips = _cdiv(n, LINEAR_BLOCK_N)
    if LINEAR_SPLIT_K <= 1 or strips >= sms:
        return strips, 1
    k_tiles = _cdiv(k, LINEAR_BLOCK_K)
    tiles_per_part = _cdiv(k_tiles, min(LINEAR_SPLIT_K, k_tiles))
    return strips, _cdiv(k_tiles, tiles_per_part)  # no part left empty


def linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor,
    *,
    norm: tuple[Tensor, Tensor] | None = None,
    gelu: bool = False,
    residual: Tensor | None = None,
) -> Tensor:
    """act(LN(x) @ weight + bias) + residual for x (M ≤ MAX_ROWS, K), weight (K, N) row-major:
    `norm` the LayerNorm's (weight, bias), `gelu` quick-GELU. One launch (two where K is split: see
    LINEAR_SPLIT_K); x's dtype out."""
    _require()
    m, k = x.shape
    n = weight.shape[1]
    if m > MAX_ROWS:
        raise ValueError(f"linear takes at most {MAX_ROWS} rows, got {m}")
    if weight.shape[0] != k or not weight.is_contiguous() or x.stride(1) != 1:
        raise ValueError("linear wants x (M, K) with unit column stride and a contiguous (K, N) weight")
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    ln_w, ln_b = norm if norm is not None else (bias, bias)
    r = residual if residual is not None else y
    strips, parts = linear_grid(k, n, multiprocessors(x.device))
    split = parts > 1
    k_per_part = _cdiv(_cdiv(k, LINEAR_BLOCK_K), parts) * LINEAR_BLOCK_K
    partial = torch.empty(parts, m, n, dtype=torch.float32, device=x.device) if split else y
    pdl = _pdl(x.device)
    _linear_kernel[(strips, parts)](
        x,
        ln_w,
        ln_b,
        weight,
        bias,
        r,
        y,
        partial,
        m,
        k,
        n,
        k_per_part,
        x.stride(0),
        r.stride(0),
        y.stride(0),
        LAYER_NORM_EPS,
        GELU_SCALE,
        NORM=norm is not None,
        GELU=gelu,
        RESIDUAL=residual is not None,
        DOT=LINEAR_DOT,
        SPLIT=split,
        PDL=pdl,
        STAGES=LINEAR_STAGES,
        BLOCK_M=_power_of_two(m, DOT_ROWS if LINEAR_DOT else 2),
        BLOCK_N=LINEAR_BLOCK_N,
        BLOCK_K=LINEAR_BLOCK_K,
        num_warps=LINEAR_WARPS,
        num_stages=LINEAR_STAGES,
        enable_fp_fusion=FP_FUSION,
        launch_pdl=pdl,
    )
    if split:
        _linear_parts_kernel[(strips,)](
            partial,
            bias,
            r,
            y,
            m,
            n,
            parts,
            r.stride(0),
            y.stride(0),
            GELU_SCALE,
            GELU=gelu,
            RESIDUAL=residual is not None,
            PDL=pdl,
            BLOCK_M=_power_of_two(m, 2),
            BLOCK_N=LINEAR_BLOCK_N,
            enable_fp_fusion=FP_FUSION,
            launch_pdl=pdl,
        )
    return y


def attend(qkv: Tensor, k_flat: Tensor, v_flat: Tensor, read: StaticRead, heads: int, cross: bool) -> Tensor:
    """The decode attention of one position, (N, H·D) out: two launches, or one where `fused_attend`.
    `qkv` is the block's c_attn output: (N, 3·H·D) (q, k, v; the new k, v go to `read.write`) or, for
    cross-attention, q alone (N, H·D).
    `k_flat`, `v_flat`: the layer's (N·H, slots, D) cache, read at `read.index` under `read.mask`."""
    _require()
    n = qkv.shape[0]
    rows, slots, d = k_flat.shape
    if rows != n * heads or not (k_flat.is_contiguous() and v_flat.is_contiguous() and qkv.is_contiguous()):
        raise ValueError(f"attend wants contiguous buffers of {n}×{heads} rows, got {tuple(k_flat.shape)}")
    n_state = heads * d
    n_keys = slots if read.index is None else read.index.shape[0]
    out = torch.empty(n, n_state, dtype=qkv.dtype, device=qkv.device)
    unused = out  # a pointer for the flags that are off (never read)
    index = read.index if read.index is not None else unused
    pdl = _pdl(qkv.device)
    # what both the scoring and the one-launch kernel take: the reads, the geometry, the switches
    reads = [t if t is not None else unused for t in (read.write, read.keep_old, index, read.mask)]
    geometry = (heads, slots, n_keys, qkv.stride(0), n_state, 2 * n_state, d, _score_scale(d), MASK_VALUE)
    flags = dict(
        HAS_WRITE=not cross and read.write is not None,
        HAS_KEEP=read.keep_old is not None,
        HAS_INDEX=read.index is not None,
        HAS_MASK=read.mask is not None,
        PDL=pdl,
        enable_fp_fusion=FP_FUSION,
        launch_pdl=pdl,
    )
    empty = read.empty if read.empty is not None else unused
    if fused_attend(n_keys, d, k_flat.dtype):
        _attend_kernel[(rows, _cdiv(d, MIX_BLOCK_D))](
            qkv,
            k_flat,
            v_flat,
            *reads,
            empty,
            out,
            *geometry,
            **flags,
            HAS_EMPTY=read.empty is not None,
            KEYS=_power_of_two(n_keys, 16),
            CHUNK_D=FUSED_CHUNK_D,
            BLOCK_D=MIX_BLOCK_D,
        )
        return out
    block_d = _power_of_two(d, 16)
    score_keys = max(1, min(ATTEND_MAX_KEYS, ATTEND_TILE_ELEMENTS // block_d))
    scores = torch.empty(rows, n_keys, dtype=torch.float32, device=qkv.device)
    _score_kernel[(rows, _cdiv(n_keys, score_keys))](
        qkv, k_flat, v_flat, *reads, scores, *geometry, **flags, BLOCK_KEYS=score_keys, BLOCK_D=block_d
    )
    _mix_kernel[(rows, _cdiv(d, MIX_BLOCK_D))](
        scores,
        v_flat,
        index,
        empty,
        out,
        heads,
        slots,
        n_keys,
        d,
        HAS_INDEX=read.index is not None,
        HAS_EMPTY=read.empty is not None,
        PDL=pdl,
        STAGES=mix_stages(d, v_flat.dtype),
        BLOCK_KEYS=MIX_BLOCK_KEYS,
        BLOCK_D=MIX_BLOCK_D,
        enable_fp_fusion=FP_FUSION,
        launch_pdl=pdl,
    )
    return out


def triton_block_step(
    x: Tensor,
    k_flat: Tensor,
    v_flat: Tensor,
    weights: tuple[Tensor, ...],
    read: StaticRead,
    heads: int,
    cross: bool,
    fast: bool,
) -> Tensor:
    """`static_block_step` in six kernels (a `BlockStep`): LN + c_attn, attention (two, or one fused),
    c_proj + residual, LN + c_fc + GELU, c_proj + residual. `fast` (the SDPA switch of the torch step)
    changes nothing."""
    ln0_w, ln0_b, attn_w, attn_b, attn_proj_w, attn_proj_b, ln1_w, ln1_b, fc_w, fc_b, proj_w, proj_b = weights
    qkv = linear(x, attn_w, attn_b, norm=(ln0_w, ln0_b))
    attended = attend(qkv, k_flat, v_flat, read, heads, cross)
    s = linear(attended, attn_proj_w, attn_proj_b, residual=x)
    hidden = linear(s, fc_w, fc_b, norm=(ln1_w, ln1_b), gelu=True)
    return linear(hidden, proj_w, proj_b, residual=s)
