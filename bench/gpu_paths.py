"""The decode paths `bench/gpu.py` times, one small adapter each (`gpu_timing` times them).

Every adapter samples one window from a mid-window state the same way: the known tokens are
prefilled in one pass, then `new_tokens` are sampled and `report(done)` is called at each segment
boundary; the harness synchronises there and reads the clock. When the sampling engine
(`sampler.jukebox.decoding`: `WindowDecoder`, `DecodeOptions`) is importable, the rows go through
it; until then (or if it fails) they run the bench's own version of the path:

    sliced   today's per-token loop (`cascade.sample_steps`), keys sliced to the visible range
    static   the same loop with the static-shape step (`prior.set_static_decode(True)`)
    graph    the static step and the draw, K tokens per call, captured by hand in a CUDA graph
             (`StaticStepper`); a dry run runs the same calls uncaptured
    compiled each residual block's static step through `torch.compile` (one graph per attention
             kind), then captured as above
    slice    the whole layer stack's static step (`Transformer.static_layers`) as one compiled graph:
             fusion across block boundaries, at a compile time that grows with the layers

`layers_skipped` swaps the transformer for an identity, so that the same path times the embedding,
the head and the draw alone ("extras", scaled separately from the layers).
"""

from __future__ import annotations

import functools
import importlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

from sampler.jukebox.cascade import sample_steps
from sampler.jukebox.prior import Conditioning, JukeboxPrior, SamplingState
from sampler.jukebox.transformer import BlockStep, KVCache, Transformer, static_block_step

Report = Callable[[int], None]
ENGINE_MODULE = "sampler.jukebox.decoding"


@dataclass(frozen=True)
class DecodePath:
    """One row of section C: the decode path, tokens per graph replay, and the compile mode."""

    name: str
    kind: str  # "sliced" | "static" | "graph"
    per_call: int = 1
    compile_mode: str | None = None  # torch.compile mode of the compiled step; None: no compile
    compile_scope: str = "block"  # "block": one graph per attention kind; "slice": the whole stack
    kernels: str = "torch"  # "triton": the engine's hand-fused block kernels (no bench version)
    pdl: bool = False  # the Triton kernels with programmatic dependent launch (`kernels.PDL`)
    # the Triton kernels at the `linear` tile bench B timed fastest over the prior's layer in this run,
    # with PDL where this run's PDL row of the prior beat the one without
    tuned: bool = False

    @property
    def extras_family(self) -> str:
        """Paths whose embedding, head and draw run alike share one extras measurement."""
        plain = self.compile_mode is None and self.kernels == "torch"
        return self.name if plain else f"graph K={self.per_call}"

    @property
    def captures(self) -> bool:
        return self.kind == "graph"


PATHS = (
    DecodePath("sliced", "sliced"),
    DecodePath("static", "static"),
    DecodePath("graph K=1", "graph", 1),
    DecodePath("graph K=16", "graph", 16),
    DecodePath("graph K=16 + compiled blocks", "graph", 16, "default"),
    DecodePath("graph K=16 + whole-slice compile", "graph", 16, "default", compile_scope="slice"),
    DecodePath("graph K=16 + max-autotune blocks", "graph", 16, "max-autotune-no-cudagraphs"),
    DecodePath("graph K=16 + triton blocks", "graph", 16, kernels="triton"),
    DecodePath("graph K=16 + triton blocks + PDL", "graph", 16, kernels="triton", pdl=True),
    DecodePath("graph K=16 + triton blocks, B's fastest tile", "graph", 16, kernels="triton", tuned=True),
)


def engine_module() -> tuple[ModuleType | None, str | None]:
    """The sampling engine when this checkout has it (feature detection, not a version check), and
    why not otherwise (None: the module does not exist)."""
    try:
        module = importlib.import_module(ENGINE_MODULE)
    except ModuleNotFoundError as exc:
        return None, None if exc.name == ENGINE_MODULE else f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a broken engine must not stop the bench: its own paths still run
        return None, f"{type(exc).__name__}: {exc}"
    if not (hasattr(module, "WindowDecoder") and hasattr(module, "DecodeOptions")):
        return None, f"{ENGINE_MODULE} has no WindowDecoder and DecodeOptions"
    return module, None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- the bench's own paths


def prefilled(prior: JukeboxPrior, cond: Conditioning, known: Tensor, max_len: int) -> SamplingState:
    """A window's state with `known` ids (N, k) fed in one prefill call, in a cache of the whole window
    as the engine's decoder keeps it: the static step reads every slot of a dense layer's cache, so a
    shorter one would read fewer keys than the engine's rows do."""
    state = prior.start(cond, max_len=min(max_len, prior.n_ctx), cache=prior.new_cache(cond.batch))
    prior.prefill(state, known)
    return state


def inverse_cdf(logits: Tensor, uniform: Tensor) -> Tensor:
    """`cascade.draw_fast`'s arithmetic with a given uniform (N, 1) float64: one id per row (N,)."""
    cdf = torch.softmax(logits, dim=-1).cumsum(dim=-1, dtype=torch.float64)
    return torch.searchsorted(cdf, uniform * cdf[:, -1:], right=True)[:, 0]


def compiled_graph_count() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


_COMPILED: dict[tuple[str, str], BlockStep] = {}


def _compiled_block_step(mode: str, backend: str) -> BlockStep:
    """One `torch.compile` wrapper per (mode, backend) for the whole run, so that a second use (the
    correctness checks) finds the graphs already compiled."""
    key = (mode, backend)
    if key not in _COMPILED:
        import torch._dynamo

        for name in ("recompile_limit", "cache_size_limit"):  # the kinds of all three priors
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 64)
        _COMPILED[key] = torch.compile(static_block_step, **compile_options(mode, backend))  # type: ignore[assignment]
    return _COMPILED[key]


def compile_options(mode: str, backend: str) -> dict[str, Any]:
    """`torch.compile`'s options for a compiled row: one static graph, `mode` where inductor takes it."""
    options: dict[str, Any] = dict(fullgraph=True, dynamic=False, backend=backend)
    if backend == "inductor":
        options["mode"] = mode
    return options


def reset_compiled() -> None:
    """Drop every compiled graph (between priors: guards of old graphs would be checked on every call)."""
    import torch._dynamo

    torch._dynamo.reset()


@contextmanager
def compiled_blocks(prior: JukeboxPrior, mode: str, backend: str) -> Iterator[None]:
    """Every residual block's static step through one compiled `static_block_step` (weights and caches
    as arguments: one graph per attention kind), as the engine's `compile` runs it."""
    transformer = prior.prior.transformer
    step = _compiled_block_step(mode, backend)
    # an instance attribute shadows the method for Transformer.decode
    object.__setattr__(
        transformer, "decode_static", functools.partial(Transformer.decode_static, transformer, step=step)
    )
    try:
        yield
    finally:
        transformer.__dict__.pop("decode_static", None)


@contextmanager
def compiled_slice(prior: JukeboxPrior, mode: str, backend: str) -> Iterator[None]:
    """The transformer's whole static layer stack through one compiled function (one graph for the
    slice). The layers' weight tuples must already be filled (one uncompiled step), or the first step
    compiles a second graph."""
    transformer = prior.prior.transformer
    # dynamo caches the graph on the method's code: a second wrapper for this transformer reuses it
    compiled = torch.compile(transformer.static_layers, **compile_options(mode, backend))
    object.__setattr__(transformer, "static_layers", compiled)  # shadows the method for decode_static
    try:
        yield
    finally:
        transformer.__dict__.pop("static_layers", None)


@contextmanager
def layers_skipped(prior: JukeboxPrior) -> Iterator[None]:
    """The transformer as an identity that still moves the position on: what is left of a step is
    its embedding, conditioning, head and draw."""
    transformer = prior.prior.transformer

    def identity(x: Tensor, cache: KVCache, step: Any = None) -> Tensor:  # the engine passes its step
        if transformer.static_decode:
            cache.position()
            cache.advance_position()
        else:
            cache.pos += 1
        return x.float()

    object.__setattr__(transformer, "decode", identity)
    object.__setattr__(transformer, "decode_static", identity)
    try:
        yield
    finally:
        transformer.__dict__.pop("decode", None)
        transformer.__dict__.pop("decode_static", None)


class StaticStepper:
    """The static decode step and the inverse-CDF draw, `per_call` tokens per call, with the token,
    the position and the uniforms on the device, so a call can be captured in a CUDA graph once and
    replayed (`capture=False`: the same calls run eagerly).

    The first token is drawn outside the calls (its input is the pending token of the prefill). The
    blocks are swapped for their compiled step after it (`compile_mode`), one call warms up (and
    compiles), one more warms the capture stream, then the capture. Every token drawn so far is in
    `tokens` (N, T); `logits` (T, N, bins) keeps each step's logits when asked.
    """

    def __init__(
        self,
        prior: JukeboxPrior,
        state: SamplingState,
        uniforms: Tensor,
        *,
        per_call: int,
        capture: bool,
        compile_mode: str | None = None,
        compile_scope: str = "block",
        compile_backend: str = "inductor",
        keep_logits: bool = False,
        temperature: float = 1.0,
    ) -> None:
        self.prior, self.state, self.uniforms = prior, state, uniforms
        self.per_call, self.temperature = per_call, temperature
        total, batch, _ = uniforms.shape
        device = uniforms.device
        self.tokens = torch.zeros(batch, total, dtype=torch.int64, device=device)
        self.token = torch.zeros(batch, dtype=torch.int64, device=device)
        self.counter = torch.zeros((), dtype=torch.int64, device=device)
        self.logits = torch.zeros(total, batch, prior.bins, device=device) if keep_logits else None
        self.graph: Any = None
        self.compiled_graphs = 0
        self._blocks_swap: Any = None
        self.done = 0
        prior.set_static_decode(True)
        try:
            with torch.inference_mode():
                self._draw(prior.step_in_inference_mode(state, None))
            self.done = 1
            before = 0
            if compile_mode is not None:
                before = compiled_graph_count()
                swap = compiled_slice if compile_scope == "slice" else compiled_blocks
                self._blocks_swap = swap(prior, compile_mode, compile_backend)
                self._blocks_swap.__enter__()
            self.call()
            if compile_mode is not None:
                self.compiled_graphs = compiled_graph_count() - before
            if capture:
                self._capture()
        except BaseException:
            self.close()
            raise

    def _draw(self, logits: Tensor) -> None:
        at = self.counter.view(1)
        if self.temperature != 1.0:
            logits = logits / self.temperature
        if self.logits is not None:
            self.logits.index_copy_(0, at, logits.unsqueeze(0))
        token = inverse_cdf(logits, self.uniforms.index_select(0, at)[0])
        self.token.copy_(token)
        self.tokens.index_copy_(1, at, token.unsqueeze(1))
        self.counter.add_(1)

    def _body(self) -> None:
        for _ in range(self.per_call):
            self._draw(self.prior.step_in_inference_mode(self.state, self.token, check_ids=False))

    def call(self) -> None:
        with torch.inference_mode():
            self._body()
        self.done += self.per_call

    def _capture(self) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.call()  # cuBLAS and the allocator warm on the capture stream
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # Capturing runs nothing on the device but moves the host's position on: from here on only
        # replays advance, and the host position is not read again.
        with torch.inference_mode(), torch.cuda.graph(graph, stream=stream):
            self._body()
        self.graph = graph

    def advance(self) -> None:
        if self.graph is not None:
            self.graph.replay()
            self.done += self.per_call
        else:
            self.call()

    def buffers(self) -> list[Tensor]:
        """Every tensor the calls write: a snapshot of these restores the stepper exactly."""
        cache = self.state.cache
        out = [self.tokens, self.token, self.counter, cache.position()]
        for layer in cache.layers:
            out += [layer.k, layer.v]
        return out + ([] if self.logits is None else [self.logits])

    def close(self) -> None:
        if self._blocks_swap is not None:
            self._blocks_swap.__exit__(None, None, None)
            self._blocks_swap = None
        self.graph = None
        self.prior.set_static_decode(False)


def window_uniforms(batch: int, total: int, device: torch.device, seed: int) -> Tensor:
    generator = torch.Generator(device=device).manual_seed(seed)
    return torch.rand(total, batch, 1, dtype=torch.float64, device=device, generator=generator)


# ---- adapters: one window's job → Sampled


@dataclass(frozen=True)
class WindowJob:
    """What every adapter is asked: sample `new` tokens after `known` (prefilled in one pass),
    calling `report(done)` every `every` tokens and after the last."""

    prior: JukeboxPrior
    cond: Conditioning
    known: Tensor
    new: int
    every: int
    report: Report
    seed: int


@dataclass
class Sampled:
    tokens: Tensor
    setup_s: float  # capture and compile before the first timed token, where the path separates it
    engine: str
    compiled_graphs: int = 0


Adapter = Callable[[WindowJob], Sampled]


def _run_loop(path: DecodePath, job: WindowJob) -> Sampled:
    """Today's loop (`sample_steps`), with the sliced or the static step."""
    prior, known = job.prior, job.known
    state = prefilled(prior, job.cond, known, known.shape[1] + job.new)
    prior.set_static_decode(path.kind == "static")
    generator = torch.Generator(device=known.device).manual_seed(job.seed)
    try:
        ids = sample_steps(prior, state, job.new, 1.0, 0, 0.0, generator, job.report, job.every, exact=False)
    finally:
        prior.set_static_decode(False)
    return Sampled(ids, 0.0, "bench")


def _run_stepper(path: DecodePath, capture: bool, compile_backend: str, job: WindowJob) -> Sampled:
    """The bench's stepper; segments count the tokens after the first, drawn before the calls."""
    prior, known, new, every = job.prior, job.known, job.new, job.every
    if (new - 1) % path.per_call:
        raise ValueError(f"{path.name}: {new} tokens are not 1 + a multiple of {path.per_call}")
    state = prefilled(prior, job.cond, known, known.shape[1] + new + path.per_call)
    uniforms = window_uniforms(job.cond.batch, new, known.device, job.seed)
    start = time.perf_counter()
    stepper = StaticStepper(
        prior,
        state,
        uniforms,
        per_call=path.per_call,
        capture=capture,
        compile_mode=path.compile_mode,
        compile_scope=path.compile_scope,
        compile_backend=compile_backend,
    )
    try:
        sync(known.device)
        setup = time.perf_counter() - start
        next_mark, last_report = every, 0
        while True:
            after_first = stepper.done - 1
            if after_first >= next_mark:
                job.report(after_first)
                last_report = after_first
                next_mark = (after_first // every + 1) * every
            if stepper.done + path.per_call > new:
                break
            stepper.advance()
        if stepper.done - 1 != last_report:
            job.report(stepper.done - 1)
        return Sampled(stepper.tokens, setup, "bench", stepper.compiled_graphs)
    finally:
        stepper.close()


def bench_adapter(path: DecodePath, capture: bool, compile_backend: str) -> Adapter:
    """The bench's own version of `path`."""
    if path.captures:
        return functools.partial(_run_stepper, path, capture, compile_backend)
    return functools.partial(_run_loop, path)


def engine_adapter(module: ModuleType, path: DecodePath, capture: bool, compile_backend: str) -> Adapter:
    def run(job: WindowJob) -> Sampled:
        chosen = {} if path.kernels == "torch" else {"kernels": path.kernels}  # older engines lack it
        options = module.DecodeOptions(
            path=path.kind, tokens_per_call=path.per_call, compile=path.compile_mode is not None, **chosen
        )
        start, graphs_before = time.perf_counter(), compiled_graph_count()
        # the engine compiles with its module's backend: this run's (aot_eager in a dry run)
        engine_backend, module.COMPILE_BACKEND = module.COMPILE_BACKEND, compile_backend
        try:
            decoder = module.WindowDecoder(job.prior, job.cond.batch, options)
            decoder.prepare()  # compile and capture now, as a worker does at start
        finally:
            module.COMPILE_BACKEND = engine_backend
        require_kernels(decoder, path.kernels)
        require_compiled(decoder, path.compile_mode is not None)
        require_path(decoder, path.kind, capture)
        sync(job.known.device)
        setup = time.perf_counter() - start
        generator = torch.Generator(device=job.known.device).manual_seed(job.seed)
        try:
            ids = decoder.sample_window(
                cond=job.cond,
                known_ids=job.known,
                new_tokens=job.new,
                temperature=1.0,
                top_k=0,
                top_p=0.0,
                generator=generator,
                report=job.report,
                progress_every=job.every,
            )
        finally:
            job.prior.set_static_decode(False)
        return Sampled(ids, setup, ENGINE_MODULE, compiled_graph_count() - graphs_before)

    return run


def require_kernels(decoder: Any, wanted: str) -> None:
    """Raise when the engine's decoder fell back (and logged why) from the block kernels asked for:
    its figures would not be that path's."""
    in_use = getattr(decoder, "kernels", "torch")  # engines before the Triton kernels: torch
    if in_use != wanted:
        raise RuntimeError(f"the engine decodes with {in_use} blocks, not {wanted}")


def require_compiled(decoder: Any, wanted: bool) -> None:
    """Raise when the engine's decoder was asked to compile its blocks and fell back (and logged why)
    to eager ones, as it does when the compiler fails on any attention kind: the row would time the
    eager step under the compiled name (the bench's own compiled path runs instead)."""
    if wanted and not getattr(decoder, "compiled", True):  # engines before the flag: trusted
        raise RuntimeError("the engine decodes with eager torch blocks, not compiled ones (its log says why)")


def require_path(decoder: Any, wanted: str, capture: bool) -> None:
    """Raise when the engine's decoder fell back (and logged why) from the CUDA graph asked for, where
    graphs can be captured: its figures would be the eager static step's under a graph row's name."""
    in_use = getattr(decoder, "path", wanted)
    if capture and wanted == "graph" and in_use != "graph":
        raise RuntimeError(f"the engine decodes with the {in_use} path, not a CUDA graph (its log says why)")


def adapters(
    path: DecodePath, engine: ModuleType | None, capture: bool, compile_backend: str
) -> list[tuple[str, Adapter]]:
    """The adapters to try in order: the engine's (for the modes it has), then the bench's own."""
    own = ("bench", bench_adapter(path, capture, compile_backend))
    if path.kernels != "torch":  # the engine's alone
        return (
            []
            if engine is None
            else [(ENGINE_MODULE, engine_adapter(engine, path, capture, compile_backend))]
        )
    # the sliced loop has no persistent decoder: it is `sample_steps` either way; the engine compiles
    # per block in the default mode only
    if (
        engine is None
        or path.kind == "sliced"
        or path.compile_mode not in (None, "default")
        or path.compile_scope != "block"
    ):
        return [own]
    return [(ENGINE_MODULE, engine_adapter(engine, path, capture, compile_backend)), own]
