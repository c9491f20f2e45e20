"""Sections A and B of `bench/gpu.py`: the device and the constants of the cost model (GPU-PLAN §3, §5).

A: GPU name, multiprocessors, memory, versions; copy and read bandwidth over 2 GB (the real
   denominator of the bound).
B: host µs per eager op, µs per tiny kernel inside a CUDA graph, LayerNorm µs, and the M ≤ 16 GEMMs
   of the published layers and heads inside a graph (weights rotated through more than the L2).
"""

from __future__ import annotations

import functools
import math
import platform
import statistics
import subprocess
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bench.gpu_context import Context
from bench.gpu_facts import H100_BANDWIDTH, nominal_bandwidth

# (n_in, n_out) of the published layers' fp16 matrices: upsampler qkv, attention out, MLP; 5b's.
LAYER_GEMMS = ((1920, 1440), (480, 1920), (1920, 1920), (4800, 3600), (1200, 4800), (4800, 4800))
# The fp32 output heads (width, bins): upsampler, 5b_lyrics, 1b_lyrics.
HEAD_GEMMS = ((1920, 2048), (4800, 2048), (2048, 2127))
GEMM_ROWS = (1, 3, 4, 8, 16)
DRY_SHRINK = 16  # a dry run divides every matrix dimension by this
ROTATE_BYTES = 256e6  # GEMM weights cycled per graph: several times an H100/H200's L2


def device_ms(ctx: Context, fn: Callable[[], object], repeats: int, warmup: int = 2) -> list[float]:
    """Milliseconds of each of `repeats` calls: CUDA events on a GPU, the host clock on the CPU."""
    for _ in range(warmup):
        fn()
    ctx.sync()
    times = []
    for _ in range(repeats):
        if ctx.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            times.append((time.perf_counter() - begin) * 1e3)
    return times


def graphed(ctx: Context, fn: Callable[[], object]) -> Callable[[], object]:
    """`fn` captured in a CUDA graph (after a warm-up on the capture stream) and replayed; on the CPU,
    `fn` itself."""
    if not ctx.capture:
        return fn
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        fn()
    return graph.replay


# ---- A


def environment(ctx: Context) -> None:
    info: dict[str, object] = dict(
        torch=torch.__version__,
        cuda=torch.version.cuda,
        python=platform.python_version(),
        device=str(ctx.device),
        dry_run=ctx.dry_run,
        compute_dtype=ctx.dtype,
        engine=getattr(ctx.engine, "__name__", None),
        engine_error=ctx.engine_error,
        compile_backend=ctx.compile_backend,
    )
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        ctx.device_name = props.name
        info.update(
            name=props.name,
            sm_count=props.multi_processor_count,
            memory_gb=props.total_memory / 1e9,
            l2_mb=getattr(props, "L2_cache_size", 0) / 1e6 or None,
            capability=f"{props.major}.{props.minor}",
            driver=_driver_version(),
        )
    else:
        ctx.device_name = f"CPU {platform.processor() or platform.machine()}"
        info.update(name=ctx.device_name, threads=torch.get_num_threads())
    ctx.nominal_bandwidth = nominal_bandwidth(ctx.device_name)
    info["nominal_tb_s"] = None if ctx.nominal_bandwidth is None else ctx.nominal_bandwidth / 1e12
    ctx.emit("A", "env", **info)


def _driver_version() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=15,
            check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def bandwidth(ctx: Context) -> None:
    size = int(8e6 if ctx.dry_run else 2e9)
    itemsize = torch.empty(0, dtype=ctx.dtype).element_size()
    src = torch.empty(size // itemsize, dtype=ctx.dtype, device=ctx.device).uniform_(-1, 1)
    dst = torch.empty_like(src)
    copy_ms = statistics.median(device_ms(ctx, lambda: dst.copy_(src), 10))
    read_ms = statistics.median(device_ms(ctx, lambda: src.sum(dtype=torch.float32), 10))
    ctx.read_bandwidth = size / (read_ms / 1e3)
    nominal = ctx.nominal_bandwidth
    ctx.emit(
        "A",
        "bandwidth",
        bytes=size,
        copy_tb_s=2 * size / (copy_ms / 1e3) / 1e12,  # read + write
        read_tb_s=ctx.read_bandwidth / 1e12,
        nominal_tb_s=None if nominal is None else nominal / 1e12,
        efficiency=None if nominal is None else ctx.read_bandwidth / nominal,
        h100_effective_tb_s=H100_BANDWIDTH * (ctx.read_bandwidth / nominal if nominal else 1.0) / 1e12,
    )


# ---- B


def launch_costs(ctx: Context) -> None:
    x = torch.zeros(1, device=ctx.device)
    count = 10_000
    ctx.sync()
    start = time.perf_counter()
    for _ in range(count):
        x.add_(1)
    ctx.sync()
    ctx.emit("B", "eager_op", ops=count, host_us_per_op=(time.perf_counter() - start) / count * 1e6)
    if not ctx.capture:
        ctx.recorder.skip("B", "graph_kernel", "CUDA graph capture needs a GPU")
        return
    kernels = 1000

    def tiny_kernels() -> None:
        for _ in range(kernels):
            x.add_(1)

    replay = graphed(ctx, tiny_kernels)
    ms = statistics.median(device_ms(ctx, replay, 5))
    ctx.emit("B", "graph_kernel", kernels=kernels, us_per_kernel=ms * 1e3 / kernels)


def _norms(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, calls: int) -> None:
    for _ in range(calls):
        torch.layer_norm(x, (x.shape[-1],), weight, bias, 1e-5)


def layernorm(ctx: Context) -> None:
    calls = 100
    for width in (1920, 4800):
        width = width // DRY_SHRINK if ctx.dry_run else width
        x = torch.randn(3, width, device=ctx.device)
        norms = functools.partial(
            _norms, x, torch.ones(width, device=ctx.device), torch.zeros(width, device=ctx.device), calls
        )
        eager_ms = statistics.median(device_ms(ctx, norms, 5))
        fields: dict[str, object] = dict(shape=[3, width], eager_us=eager_ms * 1e3 / calls)
        if ctx.capture:
            fields["graph_us"] = statistics.median(device_ms(ctx, graphed(ctx, norms), 5)) * 1e3 / calls
        ctx.emit("B", "layernorm", **fields)


def _gemm_calls(x: torch.Tensor, weights: list[torch.Tensor], bias: torch.Tensor, head: bool) -> None:
    for w in weights:
        if head:
            F.linear(x, w)
        else:
            torch.addmm(bias, x, w)


def gemms(ctx: Context) -> None:
    """fp16 `addmm` of the layers and fp32 `F.linear` of the heads for M rows, inside a graph."""
    cases = [(n_in, n_out, ctx.dtype, "layer") for n_in, n_out in LAYER_GEMMS]
    cases += [(width, bins, torch.float32, "head") for width, bins in HEAD_GEMMS]
    for n_in, n_out, dtype, role in cases:
        if ctx.dry_run:
            n_in, n_out = n_in // DRY_SHRINK, n_out // DRY_SHRINK
        weight_bytes = n_in * n_out * torch.empty(0, dtype=dtype).element_size()
        copies = 2 if ctx.dry_run else min(128, max(2, math.ceil(ROTATE_BYTES / weight_bytes)))
        weights = [torch.randn(n_in, n_out, device=ctx.device, dtype=dtype) for _ in range(copies)]
        if role == "head":  # F.linear's (out, in) layout, as the tied head
            weights = [w.t().contiguous() for w in weights]
        bias = torch.zeros(n_out, device=ctx.device, dtype=dtype)
        for rows in GEMM_ROWS:
            x = torch.randn(rows, n_in, device=ctx.device, dtype=dtype)
            run = functools.partial(_gemm_calls, x, weights, bias, role == "head")
            ms = statistics.median(device_ms(ctx, graphed(ctx, run), 5)) / copies
            ctx.emit(
                "B",
                "gemm",
                role=role,
                m=rows,
                n_in=n_in,
                n_out=n_out,
                dtype=dtype,
                in_graph=ctx.capture,
                us=ms * 1e3,
                weight_tb_s=weight_bytes / (ms / 1e3) / 1e12,
            )
        del weights
