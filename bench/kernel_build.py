"""The engine's Triton kernels compiled for a GPU on any machine, no GPU or CUDA driver needed.

Triton compiles ahead of time for a named target with the ptxas its wheel brings, so the kernels a
decode step launches can be built and read before a GPU is at hand. A compile-only driver stands in
for CUDA's: the real decode step of each measured prior (`bench/gpu_models.py`'s slices at published
width and context) runs on the CPU with uninitialised weights, Triton's `jit_cache_hook` records every
specialization it would compile (argument types, constants, alignment, options) and launches nothing;
each is then compiled for the target down to SASS. Per specialization it reports:

* registers per thread and dynamic shared memory (occupancy);
* spill instructions: local-memory loads and stores in the SASS (a tile too big for the registers);
* global loads by width in bits (128: vectorised; 16: one fp16 at a time), how many of them are
  asynchronous copies to shared memory (cp.async: a loop Triton's software pipeliner loads ahead), and
  tensor-core instructions.

    python -m bench.kernel_build                        # sm_90 (H100/H200), fp16, 3 samples
    python -m bench.kernel_build --arch 80 --batch 16   # an A100, the kernels' largest batch
    python -m bench.kernel_build --tiles                # also every linear tile bench B times
    python -m bench.kernel_build --pdl                  # with kernels.PDL on (sm_90 and later)
    python -m bench.kernel_build --fused-attention      # with one attention launch where keys are few

Both `linear` products (`kernels.LINEAR_DOT` off and on) are built at every batch; the exit status is
1 when a build spills registers.

The compile is the one the GPU does at its first launch, so a kernel that does not build here would
not build there. Figures are static: speed is for `bench/gpu.py` on the GPU.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

import bench.gpu_imports  # noqa: F401  (before the sampler: the GPU image lacks unidecode)
from bench.gpu_kernels import ROWS, TILES, Tile
from bench.gpu_micro import LAYER_GEMMS
from bench.gpu_models import PRIORS, prior_config
from sampler.jukebox import kernels
from sampler.jukebox.transformer import Transformer

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
WARP_SIZE = 32
# SASS opcodes (after any predicate) of global loads, local-memory (spill) traffic and tensor cores.
_OPCODE = re.compile(r"/\*[0-9a-f]{4}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)")
_LOAD_BITS = {"U8": 8, "S8": 8, "U16": 16, "S16": 16, "64": 64, "128": 128}
_RESOURCES = re.compile(r"REG:(\d+)")
_SPILLS = ("STL", "LDL")
_TENSOR_CORES = ("HMMA", "HGMMA", "QGMMA", "IMMA")  # HGMMA/QGMMA: Hopper's wgmma
# The compile options a launch chooses (the rest are the target's defaults).
_OPTIONS = (
    "num_warps",
    "num_ctas",
    "num_stages",
    "enable_fp_fusion",
    "launch_cooperative_grid",
    "launch_pdl",
)


@dataclass
class Launch:
    """One specialization of one kernel, as Triton's runtime would compile it at a launch."""

    kernel: str
    fn: Any  # the JITFunction
    signature: dict[str, str]
    constants: dict[tuple[int, ...], Any]
    attrs: dict[tuple[int, ...], Any]
    options: dict[str, Any]
    users: list[str] = field(default_factory=list)  # which prior or tile launched it

    def described_constants(self) -> dict[str, Any]:
        names = self.fn.arg_names
        return {names[path[0]]: value for path, value in self.constants.items()}


@dataclass(frozen=True)
class Build:
    """What the target's compiler made of a Launch."""

    arch: int
    kernel: str
    users: tuple[str, ...]
    constants: dict[str, Any]
    pointers: tuple[str, ...]
    num_warps: int
    num_stages: int
    fp_fusion: bool
    pdl: bool  # launched with programmatic dependent launch, its PTX waiting on the grid before it
    registers: int
    shared_bytes: int
    spill_ops: int
    loads: dict[int, int]  # global load instructions by width in bits
    async_copies: int  # of them, cp.async (LDGSTS): the software pipeliner loading ahead to shared memory
    tensor_core_ops: int

    def row(self) -> dict[str, Any]:
        return asdict(self)


class _CompileOnly:
    """A Triton driver that names a CUDA target and a device and stream for the runtime's caches, and
    nothing else: with the recording hook on, no kernel is compiled or launched through it."""

    def __init__(self, arch: int) -> None:
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", arch, WARP_SIZE)

    def get_current_target(self) -> Any:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")


class Recorder:
    """Collects the specializations launched while `recording` is on, labelled by `user`."""

    def __init__(self) -> None:
        self.launches: dict[tuple[str, str], Launch] = {}
        self.user = ""
        self.launch_count: collections.Counter[str] = collections.Counter()  # every launch, by user
        self.layer_steps: collections.Counter[str] = collections.Counter()  # decode steps × layers, by prior

    def launches_per_layer_step(self) -> dict[str, float]:
        """Kernel launches per layer and decode step of each prior recorded."""
        return {prior: self.launch_count[prior] / n for prior, n in self.layer_steps.items()}

    def hook(self, *, key: Any, fn: Any, compile: dict[str, Any], **_: Any) -> bool:
        # Called at every launch: the hook handles it, so Triton caches nothing and launches nothing.
        self.launch_count[self.user] += 1
        jit = fn.jit_function
        launch = self.launches.get((jit.__name__, str(key)))
        if launch is None:
            chosen = json.loads(compile["specialization_data"])["options"]  # launch_pdl is only here
            options = {name: chosen[name] for name in _OPTIONS}
            launch = Launch(
                jit.__name__, jit, compile["signature"], compile["constants"], compile["configs"][0], options
            )
            self.launches[(jit.__name__, str(key))] = launch
        if self.user not in launch.users:
            launch.users.append(self.user)
        return True


@contextlib.contextmanager
def recording(arch: int) -> Iterator[Recorder]:
    """Launches of the engine's kernels are recorded for `arch` (e.g. 90) instead of run; they use
    programmatic dependent launch where `kernels.PDL` asks and `arch` has it."""
    import triton
    from triton import knobs

    if kernels.INTERPRETED:
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter compiles nothing")
    recorder = Recorder()
    config = triton.runtime.driver
    previous_driver, previous_hook = config._active, knobs.runtime.jit_cache_hook
    previous_capable = kernels.pdl_capable
    config.set_active(_CompileOnly(arch))  # type: ignore[arg-type]
    knobs.runtime.jit_cache_hook = recorder.hook
    kernels.pdl_capable = lambda device: arch >= 90  # the tensors are on the CPU: the target decides
    try:
        yield recorder
    finally:
        config._active, knobs.runtime.jit_cache_hook = previous_driver, previous_hook
        kernels.pdl_capable = previous_capable
        for fn in (kernels._linear_kernel, kernels._score_kernel, kernels._mix_kernel):
            fn.device_caches.clear()  # their binders were made for the compile-only target


def _slice(prior: str, dtype: torch.dtype) -> Transformer:
    """`prior`'s measured slice at published width and context, its weights uninitialised (only their
    shapes and dtypes count), in `dtype` as a worker holds it."""
    spec = PRIORS[prior]
    config = prior_config(spec, dry_run=False, layers=spec.layers)
    with torch.device("meta"):
        transformer = Transformer(config.transformer_config())
    transformer = transformer.to_empty(device="cpu").eval()
    transformer.to_compute_dtype(dtype)
    return transformer


def decode_steps(recorder: Recorder, prior: str, dtype: torch.dtype, batches: Sequence[int]) -> None:
    """One static decode step of `prior`'s slice with the Triton block step at each batch size and each
    `linear` product (outputs unused)."""
    transformer = _slice(prior, dtype)
    default = Tile.default()
    recorder.user = prior
    for batch, dot in itertools.product(batches, (False, True)):
        cache = transformer.new_cache(batch, reusable=True)
        x = torch.zeros(batch, transformer.config.width)
        with torch.no_grad(), dataclasses.replace(default, dot=dot).chosen():
            transformer.decode_static(x, cache, step=kernels.triton_block_step)
        recorder.layer_steps[prior] += transformer.config.depth


def linear_tiles(recorder: Recorder, dtype: torch.dtype) -> None:
    """`linear` (LayerNorm prologue) at every layer GEMM shape with every tile bench B times."""
    for n_in, n_out in LAYER_GEMMS:
        x = torch.zeros(ROWS, n_in, dtype=dtype)
        weight = torch.zeros(n_in, n_out, dtype=dtype)
        bias = torch.zeros(n_out, dtype=dtype)
        norm = (torch.ones(n_in), torch.zeros(n_in))
        for tile in TILES:
            recorder.user = f"tile {tile.name}"
            with tile.chosen():
                kernels.linear(x, weight, bias, norm=norm)


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def build(launch: Launch, arch: int) -> Build:
    """Compile `launch` for `arch` to SASS and read its resources and instruction mix."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(launch.fn, launch.signature, launch.constants, launch.attrs)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, WARP_SIZE), options=launch.options)
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([_tool("cuobjdump"), "-res-usage", cubin.name], capture_output=True, text=True)
        sass = subprocess.run([_tool("cuobjdump"), "-sass", cubin.name], capture_output=True, text=True)
    registers = _RESOURCES.search(usage.stdout)
    if usage.returncode or sass.returncode or registers is None:
        raise RuntimeError(f"cuobjdump could not read {launch.kernel}: {usage.stderr or sass.stderr}")
    opcodes = collections.Counter(m.group(1) for m in _OPCODE.finditer(sass.stdout))
    loads: dict[int, int] = collections.Counter()
    for opcode, count in opcodes.items():
        if opcode.startswith(("LDG.", "LDGSTS.")):
            widths = [_LOAD_BITS[part] for part in opcode.split(".") if part in _LOAD_BITS]
            loads[widths[-1] if widths else 32] += count
    return Build(
        arch=arch,
        kernel=launch.kernel,
        users=tuple(launch.users),
        constants=launch.described_constants(),
        pointers=tuple(t for t in launch.signature.values() if t.startswith("*")),
        num_warps=compiled.metadata.num_warps,
        num_stages=compiled.metadata.num_stages,
        fp_fusion=compiled.metadata.enable_fp_fusion,
        pdl=bool(launch.options["launch_pdl"]) and "griddepcontrol.wait" in compiled.asm["ptx"],
        registers=int(registers.group(1)),
        shared_bytes=compiled.metadata.shared,
        spill_ops=sum(n for opcode, n in opcodes.items() if opcode.startswith(_SPILLS)),
        loads=dict(sorted(loads.items())),
        async_copies=sum(n for opcode, n in opcodes.items() if opcode.startswith("LDGSTS")),
        tensor_core_ops=sum(n for opcode, n in opcodes.items() if opcode.startswith(_TENSOR_CORES)),
    )


def record(
    arch: int, dtype: torch.dtype, batches: Sequence[int], priors: Sequence[str], tiles: bool = False
) -> Recorder:
    """The specializations the decode steps of `priors` launch for `arch` at `batches` samples with
    either `linear` product (and with `tiles`, bench B's tiles)."""
    with recording(arch) as recorder:
        for prior in priors:
            decode_steps(recorder, prior, dtype, batches)
        if tiles:
            linear_tiles(recorder, dtype)
    return recorder


def build_all(recorders: dict[int, Recorder]) -> Iterator[Build]:
    """Every recorded specialization built for the arch it was recorded for."""
    jobs = [(launch, arch) for arch, recorder in recorders.items() for launch in recorder.launches.values()]
    # the compiler's passes and ptxas leave the GIL: threads build several at once
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        yield from pool.map(lambda job: build(*job), jobs)


def builds(
    archs: Sequence[int],
    dtype: torch.dtype,
    batches: Sequence[int],
    priors: Sequence[str] = tuple(PRIORS),
    tiles: bool = False,
) -> Iterator[Build]:
    """`record` for each of `archs`, then `build_all`."""
    return build_all({arch: record(arch, dtype, batches, priors, tiles) for arch in archs})


def _summary(result: Build) -> str:
    loads = " ".join(f"{n}×{bits}b" for bits, n in result.loads.items())
    constants = " ".join(
        f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in result.constants.items() if k.isupper()
    )
    return (
        f"sm_{result.arch} {result.kernel:<14} {','.join(result.users):<28} warps {result.num_warps:>2}  "
        f"regs {result.registers:>3}  smem {result.shared_bytes:>6}  spills {result.spill_ops:>3}  "
        f"tc {result.tensor_core_ops:>3}{'  pdl' if result.pdl else ''}  loads {loads} "
        f"(async {result.async_copies})  {constants}"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--arch", type=int, nargs="+", default=[90], help="compute capabilities ×10 (90: H100/H200; 80: A100)"
    )
    parser.add_argument("--dtype", choices=DTYPES, default="float16")
    parser.add_argument(
        "--batch", type=int, nargs="+", default=[3], help=f"samples decoded at once (≤ {kernels.MAX_ROWS})"
    )
    parser.add_argument("--priors", nargs="+", choices=PRIORS, default=list(PRIORS))
    parser.add_argument("--tiles", action="store_true", help=f"also bench B's linear tiles at {ROWS} rows")
    parser.add_argument("--pdl", action="store_true", help="with kernels.PDL on (sm_90 and later use it)")
    parser.add_argument(
        "--fused-attention",
        action="store_true",
        help="with kernels.FUSED_ATTEND_KEYS on: one attention launch where a kind reads few keys",
    )
    parser.add_argument("--json", action="store_true", help="one JSON line per build instead of a table")
    args = parser.parse_args(argv)
    kernels.PDL = args.pdl
    kernels.FUSED_ATTEND_KEYS = kernels.FUSED_MAX_KEYS if args.fused_attention else 0
    recorders = {
        arch: record(arch, DTYPES[args.dtype], args.batch, args.priors, args.tiles) for arch in args.arch
    }
    spilled = 0
    for result in build_all(recorders):
        spilled += result.spill_ops > 0
        print(json.dumps(result.row(), default=str) if args.json else _summary(result), flush=True)
    per_layer = recorders[args.arch[0]].launches_per_layer_step()
    if args.json:
        print(json.dumps({"launches_per_layer_step": per_layer}))
    else:
        print("launches per layer and decode step: " + ", ".join(f"{p} {n:g}" for p, n in per_layer.items()))
    if spilled:
        print(f"{spilled} builds spill registers to local memory", file=sys.stderr)
    return 1 if spilled else 0


if __name__ == "__main__":
    sys.exit(main())
