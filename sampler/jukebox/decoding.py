"""The persistent window decoder: window after window in the same device buffers, K tokens a call.

GPU-PLAN.md §4 steps 3–5. A `WindowDecoder` belongs to one (prior, batch). It allocates the KV cache
and every per-window buffer once, copies each window's conditioning into them, prefills into the same
cache, and samples with the static-shape step (`Transformer.decode_static`): the position, the next
input, the draw's uniforms and the drawn ids all live on the device, so a call of K tokens reads
nothing back and has fixed shapes and addresses. That call can then be

* run eagerly (path "static"),
* captured once in a CUDA graph and replayed ⌈new / K⌉ times a window (path "graph"; the last
  new mod K tokens replay a one-token graph),
* and, either way, run each residual block as one `torch.compile`d graph per attention kind
  (`compile`), or as six hand-fused Triton kernels (`kernels="triton"`, `sampler.jukebox.kernels`).

The draws are today's `rng="window"` draws (`draw_fast`): one uniform per row and token, drawn for the
whole window at its start. The cascade draws them for all its samples and hands each batch its rows
(`sample_window(uniforms=…)`), as it does to the sliced loop, so every path takes the same draws. A
decoder given none draws its own: on the CPU generator that is the same stream as drawing them token
by token, so on the CPU the static path gives the sliced path's tokens
(tests/sampler/jukebox/test_decoding.py); on CUDA another stream of the same distribution.
`rng="reference"` (the exact draw of parity runs) stays on the sliced loop (`cascade.sample_steps`).
"""

from __future__ import annotations

import functools
import logging
import threading
import weakref
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sampler.engine_settings import (
    AUTO,
    DECODE_KERNELS,
    DECODE_PATHS,
    DecodeKernels,
    DecodePath,
    parse_decode_kernels,
    parse_decode_path,
    parse_switch,
    switch_value,
)
from sampler.jukebox.cascade import ONE_PASS, SamplingError, filter_logits, invert_cdf, prefill_known
from sampler.jukebox.prior import Conditioning, JukeboxPrior
from sampler.jukebox.transformer import BlockStep, static_block_step

log = logging.getLogger(__name__)

# Held while a decoder builds its calls (compile, rehearse, capture) and while the allocator's cache
# is emptied: a CUDA graph capture begins with a device-wide synchronize and an emptied cache, which
# break a capture another thread has under way (two levels sampled at once build their decoders
# together when a job resumes mid-overlap). Builds take turns; replays do not wait.
CUDA_BUILD_LOCK = threading.RLock()


def empty_cuda_cache() -> None:
    """`torch.cuda.empty_cache()` between captures, never during one."""
    if torch.cuda.is_available():
        with CUDA_BUILD_LOCK:
            torch.cuda.empty_cache()


# What `torch.compile` hands the block graphs to; tests swap in a graph-counting backend.
COMPILE_BACKEND: str | Callable[..., Any] = "inductor"
# Dynamo keeps at most `recompile_limit` (8) graphs per function: one per attention kind (≤ 5) times
# every batch size and prior width a worker decodes needs more.
COMPILED_GRAPHS_LIMIT = 64


@dataclass(frozen=True)
class DecodeOptions:
    """How the sampling loop runs (rng="window" only; the exact draw always takes the sliced loop).

    path: "sliced" (the per-token loop of `cascade.sample_steps`), "static" (the persistent decoder,
        eager) or "graph" (the persistent decoder's calls captured in CUDA graphs; CUDA only, else
        it falls back to "static" with one log line).
    tokens_per_call: K, the tokens one call (one graph replay) samples; progress and cancel run
        between calls.
    compile: each residual block as one `torch.compile(fullgraph=True, dynamic=False)` graph per
        attention kind (static and graph paths).
    kernels: "torch" (the block's torch ops, compiled or not) or "triton" (each block in six
        hand-fused kernels, `sampler.jukebox.kernels`; it replaces `compile`'s blocks; where Triton
        cannot run, the torch step with one log line).
    """

    path: DecodePath = "sliced"
    tokens_per_call: int = 16
    compile: bool = False
    kernels: DecodeKernels = "torch"

    def __post_init__(self) -> None:
        if self.path not in DECODE_PATHS:
            raise ValueError(f"decode path must be one of {', '.join(DECODE_PATHS)}, got {self.path!r}")
        if self.kernels not in DECODE_KERNELS:
            raise ValueError(
                f"decode kernels must be one of {', '.join(DECODE_KERNELS)}, got {self.kernels!r}"
            )
        if self.tokens_per_call < 1:
            raise ValueError(f"tokens_per_call must be at least 1, got {self.tokens_per_call}")


def default_decode_options(device: torch.device | str) -> DecodeOptions:
    """The estimated fastest on `device`: CUDA graphs of compiled blocks on CUDA (GPU-PLAN.md §3); the
    sliced loop on the CPU, where the static step is slower (bench/sampling.py --decode-path)."""
    if torch.device(device).type == "cuda":
        return DecodeOptions(path="graph", compile=True)
    return DecodeOptions()


def decode_options(
    device: torch.device | str,
    path: str | None = None,
    compile: str | None = None,
    kernels: str | None = None,
) -> DecodeOptions:
    """The runner options `decode_path` (auto, sliced, static, graph), `decode_compile` (auto, on,
    off) and `decode_kernels` (auto, torch, triton) over `default_decode_options(device)`; ValueError
    names a bad value."""
    options = default_decode_options(device)
    chosen_path = parse_decode_path(path or AUTO)
    if chosen_path != AUTO:
        options = replace(options, path=chosen_path)
    chosen_compile = switch_value(parse_switch("decode_compile", compile or AUTO))
    if chosen_compile is not None:
        options = replace(options, compile=chosen_compile)
    chosen_kernels = parse_decode_kernels(kernels or AUTO)
    if chosen_kernels != AUTO:
        options = replace(options, kernels=chosen_kernels)
    return options


def dynamo_config() -> Any:
    """torch._dynamo's config module (a function, so that tests can stand in an older torch's)."""
    return torch._dynamo.config


@functools.cache
def compiled_block_step(backend: str | Callable[..., Any]) -> BlockStep:
    """`static_block_step` compiled: one graph per attention kind (and batch and width), shared by
    every decoder of the process (dynamo caches graphs per function)."""
    config = dynamo_config()
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # torch < 2.7
    setattr(config, name, max(getattr(config, name), COMPILED_GRAPHS_LIMIT))
    compiled = torch.compile(static_block_step, fullgraph=True, dynamic=False, backend=backend)
    return compiled  # type: ignore[return-value]


class WindowDecoder:
    """Samples windows of one prior for a batch of `batch` sequences in buffers allocated once.

    Holds the prior weakly (it may be freed once its level is done; the decoder goes with it when
    made by `window_decoder`) and its token model's tensors strongly while it lives.
    """

    def __init__(self, prior: JukeboxPrior, batch: int, options: DecodeOptions) -> None:
        if options.path == "sliced":
            raise ValueError("the sliced path has no persistent decoder: use cascade.sample_steps")
        config = prior.config
        if not 1 <= options.tokens_per_call <= config.n_ctx:
            raise ValueError(f"tokens_per_call must be in 1..{config.n_ctx} (n_ctx), got {options}")
        self._prior = weakref.ref(prior)
        self.batch, self.options = batch, options
        self.path: DecodePath = options.path  # "static" after a failed capture
        self.kernels: DecodeKernels = "torch"  # the blocks' kernels in use, set by _chosen_block_step
        self.compiled = False  # whether the torch blocks run compiled (False again after a failed compile)
        model = prior.prior
        assert model.x_out is not None
        self._transformer = model.transformer
        self._x_emb = model.x_emb.weight.detach()
        self._pos_emb = model.pos_emb.pos_emb.detach()
        self._x_out = model.x_out.weight.detach()
        self._readd_cond = model.readd_cond
        self.device = self._x_emb.device
        self._n_ctx = config.n_ctx
        self._block_step = self._chosen_block_step(options)
        # Normal tensors, even if made inside inference mode: compiled code and CUDA graphs take
        # them as inputs window after window (GPU-PLAN §2: caches made in inference mode broke
        # the compiled step).
        with torch.inference_mode(False), torch.no_grad():
            self.cache = prior.new_cache(batch)
            self.cache.position()  # allocates the device position and key index
            width, device = config.prior_width, self.device
            self._start = torch.zeros(batch, 1, width, device=device)
            self._x_cond = torch.zeros(batch, config.seq_len, width, device=device)
            self._x_in = torch.zeros(batch, width, device=device)  # the next step's input embedding
            self._drawn = torch.zeros((), dtype=torch.int64, device=device)  # tokens drawn this window
            self._ids = torch.zeros(batch, config.n_ctx, dtype=torch.int64, device=device)
            # each row's totals summed over the window's tokens: not finite once its logits were not
            # numbers (`rows_not_finite`, read at the window's end)
            self.row_totals = torch.zeros(batch, dtype=torch.float64, device=device)
            self._uniforms = torch.zeros(config.n_ctx, batch, 1, dtype=torch.float64, device=device)
            self._temperature = torch.ones((), device=device)
        # each built call's CUDA graph replay, or None: the eager `_run` (a bound method kept here
        # would tie the decoder in a reference cycle that outlives its prior until the next gc)
        self._calls: dict[tuple[int, int, float], Callable[[], None] | None] = {}
        self._graph_pool: Any = None
        self._capture_stream: torch.cuda.Stream | None = None

    def _chosen_block_step(self, options: DecodeOptions) -> BlockStep | None:
        """The residual block's step: Triton's, compiled torch, or None (eager torch)."""
        if options.kernels == "triton":
            try:  # triton is optional: imported only when asked for
                from sampler.jukebox import kernels

                reason = kernels.unavailable(self.device, self.batch)
            except Exception as exc:  # a Triton this module cannot even import with
                reason = f"{type(exc).__name__}: {exc}"
            if reason is None:
                self.kernels = "triton"
                return kernels.triton_block_step
            log.warning("no Triton decode kernels (%s): decoding with the torch block step", reason)
        if not options.compile:
            return None
        try:
            step = compiled_block_step(COMPILE_BACKEND)
        except Exception as exc:
            log.warning("no compiled decode blocks (%s): decoding with eager torch blocks", exc)
            return None
        self.compiled = True
        return step

    # ---- the window

    def sample_window(
        self,
        cond: Conditioning,
        known_ids: Tensor,
        new_tokens: int,
        temperature: float,
        top_k: int,
        top_p: float,
        generator: torch.Generator,
        report: Callable[[int], None] | None = None,
        progress_every: int = 32,
        *,
        chunk_size: int | None = None,
        uniforms: Tensor | None = None,
    ) -> Tensor:
        """One window: prefill `known_ids` (N, k) (in chunks of `chunk_size`; None: one pass), then
        draw `new_tokens` ids; returns them (N, new_tokens).

        The draws take `uniforms` (new_tokens, N, 1) fp64 when given (the cascade's, drawn for all
        its samples), else (new_tokens, N, 1) uniforms drawn from `generator` at the window's start.

        `report(done)` runs between calls, every `progress_every` tokens rounded to a multiple of K,
        and after the last token, and `report(0)` between prefill passes; it may raise to cancel. Rows
        whose logits were not numbers at some token show in `row_totals` (their ids stay in range), for
        the caller to read once.
        """
        prior = self._prior()
        if prior is None:
            raise SamplingError("this decoder's prior has been freed")
        known = known_ids.shape[1]
        if new_tokens <= 0 or known + new_tokens > self._n_ctx:
            raise SamplingError(
                f"a window holds {self._n_ctx} tokens: cannot sample {new_tokens} after {known} known"
            )
        if cond.batch != self.batch or known_ids.shape[0] != self.batch:
            raise SamplingError(f"this decoder samples batches of {self.batch}, got {cond.batch}")
        per_call = self.options.tokens_per_call
        every = per_call * max(1, round(progress_every / per_call))
        done = 0
        with self._on_device():
            many, one = self._call(per_call, top_k, top_p), self._call(1, top_k, top_p)
            between = None if report is None else lambda: report(0)  # a report of no new token yet
            self._begin(
                prior, cond, known_ids, new_tokens, temperature, generator, chunk_size, uniforms, between
            )
            with torch.inference_mode():
                while done < new_tokens:
                    if new_tokens - done >= per_call:
                        many()
                        done += per_call
                    else:
                        one()
                        done += 1
                    if report is not None and (done % every == 0 or done == new_tokens):
                        report(done)
        return self._ids[:, :new_tokens].clone()

    def prepare(self, top_k: int = 0, top_p: float = 0.0) -> None:
        """Compile and capture now what windows with this filter will call (at worker start)."""
        with self._on_device():
            self._call(self.options.tokens_per_call, top_k, top_p)
            self._call(1, top_k, top_p)

    def _on_device(self) -> AbstractContextManager[Any]:
        """The decoder's GPU as the thread's current device. CUDA keeps one per host thread, and
        a worker's job and level threads start on cuda:0: graph capture streams, Triton launches and
        the default streams follow the current device, not the tensors'."""
        return torch.cuda.device(self.device) if self.device.type == "cuda" else nullcontext()

    @torch.no_grad()
    def _begin(
        self,
        prior: JukeboxPrior,
        cond: Conditioning,
        known_ids: Tensor,
        new_tokens: int,
        temperature: float,
        generator: torch.Generator,
        chunk_size: int | None,
        given_uniforms: Tensor | None = None,
        between: Callable[[], None] | None = None,
    ) -> None:
        """The window's conditioning into the buffers, its known ids into the cache (`between()` between
        prefill passes), its draws."""
        if cond.x_cond.shape[1] not in (1, self._x_cond.shape[1]):
            raise SamplingError(
                f"x_cond holds {cond.x_cond.shape[1]} positions; this prior has {self._x_cond.shape[1]}"
            )
        self._start.copy_(cond.start)
        self._x_cond.copy_(cond.x_cond)  # a single row (N, 1, W) is the same at every position
        persistent = Conditioning(self._start, self._x_cond, cond.encoder_states, cond.prefix_ids)
        known = known_ids.shape[1]
        state = prior.start(persistent, known + new_tokens, cache=self.cache)
        if known:
            prefill_known(prior, state, known_ids, ONE_PASS if chunk_size is None else chunk_size, between)
        elif state.prefix_queued:  # 1b_lyrics with nothing known: the lyric prefix goes alone
            prior.feed_queued_prefix(state)
        # The first step's input: the start embedding, or the newest known id (still pending).
        if state.pending_start:
            self._x_in.copy_(self._start[:, 0])
        else:
            assert state.pending is not None
            self._x_in.copy_(torch.embedding(self._x_emb, state.pending.reshape(-1)))
        state.pending_start, state.pending = False, None
        self.cache.position()  # the device position from the host's, once
        self._drawn.zero_()
        self.row_totals.zero_()
        self._temperature.fill_(temperature)
        uniforms = self._uniforms[:new_tokens]
        if given_uniforms is not None:
            if given_uniforms.shape != uniforms.shape:
                raise SamplingError(
                    f"uniforms of shape {tuple(uniforms.shape)} expected, got {tuple(given_uniforms.shape)}"
                )
            uniforms.copy_(given_uniforms)
        # One draw of T×N uniforms is the stream of T draws of N on the CPU generator.
        elif generator.device == uniforms.device:
            torch.rand(uniforms.shape, dtype=torch.float64, generator=generator, out=uniforms)
        else:
            uniforms.copy_(
                torch.rand(uniforms.shape, dtype=torch.float64, generator=generator, device=generator.device)
            )

    # ---- calls of K tokens

    def _token(self, top_k: int, top_p: float) -> None:
        """One token on the device: step, temperature, filter, draw, feed back. Nothing read back."""
        cache = self.cache
        at = cache.position().view(1)
        x_cond = self._x_cond.index_select(1, at)[:, 0]
        x = self._x_in + self._pos_emb.index_select(0, at)
        x = x + x_cond
        h = self._transformer.decode_static(x, cache, self._block_step)
        if self._readd_cond:
            h = h + x_cond
        logits = F.linear(h, self._x_out)
        logits.div_(self._temperature)  # x / 1.0 is x: the same bits as skipping it
        logits = filter_logits(logits, top_k, top_p)
        drawn = self._drawn.view(1)
        token = invert_cdf(logits, self._uniforms.index_select(0, drawn)[0], self.row_totals)
        self._ids.index_copy_(1, drawn, token.view(-1, 1))
        self._x_in.copy_(torch.embedding(self._x_emb, token))
        self._drawn.add_(1)

    def _run(self, steps: int, top_k: int, top_p: float) -> None:
        for _ in range(steps):
            self._token(top_k, top_p)

    def _call(self, steps: int, top_k: int, top_p: float) -> Callable[[], None]:
        """The call that samples `steps` tokens with this filter: `_run` itself, or the replay of its
        CUDA graph. Made (compiled, captured) on first use, before any window state is set."""
        key = (steps, top_k, top_p)
        if key not in self._calls:
            with CUDA_BUILD_LOCK:
                self._calls[key] = self._make_call(steps, top_k, top_p)
        return self._calls[key] or functools.partial(self._run, steps, top_k, top_p)

    def _make_call(self, steps: int, top_k: int, top_p: float) -> Callable[[], None] | None:
        """Build (compile, rehearse, capture) the call of `steps` tokens: its graph's replay, or None."""
        run = functools.partial(self._run, steps, top_k, top_p)
        if self._block_step is not None or self.path == "graph":
            # A first run on rewound buffers: compiles the blocks, and warms up before a capture.
            try:
                self._rehearse(run)
            except Exception as exc:
                if self._block_step is None:
                    raise
                log.warning("building the decode blocks failed (%s): decoding with eager torch blocks", exc)
                self._block_step = None
                self.kernels, self.compiled = "torch", False
                self._rehearse(run)
        if self.path == "graph":
            try:
                return self._capture(run, steps)
            except Exception as exc:
                log.warning(
                    "no CUDA graph for the decode step (%s): decoding with the eager static step", exc
                )
                self.path = "static"
            finally:
                self._rewind()
        return None  # eager: `_call` binds `_run` for each window

    def _rewind(self) -> None:
        """Position 0, nothing drawn: a state any call can run from (between windows only)."""
        self.cache.restart()
        self.cache.position()
        self._drawn.zero_()

    def _rehearse(self, run: Callable[[], None]) -> None:
        self._rewind()
        if self.device.type == "cuda":
            # warm up on a side stream, as CUDA graph capture wants
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side), torch.inference_mode():
                run()
            torch.cuda.current_stream(self.device).wait_stream(side)
        else:
            with torch.inference_mode():
                run()
        self._rewind()

    def _capture(self, run: Callable[[], None], steps: int) -> Callable[[], None]:
        """`run` captured in a CUDA graph; the call replays it and moves the host position on."""
        if self.device.type != "cuda":
            raise RuntimeError(f"CUDA graphs need a CUDA device, this prior is on {self.device}")
        graph = torch.cuda.CUDAGraph()
        # thread_local: the worker's other threads (heartbeats, progress) may touch CUDA meanwhile
        if self._capture_stream is None:  # torch's default capture stream is on whichever GPU made it first
            self._capture_stream = torch.cuda.Stream(self.device)
        capture = torch.cuda.graph(
            graph, pool=self._graph_pool, stream=self._capture_stream, capture_error_mode="thread_local"
        )
        # the outer stream context puts the thread's stream back even when the capture's end raises
        # (torch.cuda.graph's own exit then skips it)
        with torch.cuda.stream(self._capture_stream), capture, torch.inference_mode():
            run()
        self._graph_pool = graph.pool()  # the graphs of one decoder share their memory
        cache = self.cache

        def replay() -> None:
            graph.replay()
            cache.moved_on_device(steps)

        return replay


_DECODERS: weakref.WeakKeyDictionary[JukeboxPrior, dict[tuple[int, DecodeOptions], WindowDecoder]] = (
    weakref.WeakKeyDictionary()
)


def window_decoder(
    prior: JukeboxPrior, batch: int, options: DecodeOptions, keep: Collection[int] = ()
) -> WindowDecoder:
    """The decoder of (prior, batch, options), made on first use; it lives as long as the prior, or
    until a batch of a size neither `batch` nor in `keep` asks for one. A job passes the sizes its
    batches take (`batch_rows`): a full batch and a remainder alternate every window without
    rebuilding, and no other size keeps a whole-window KV cache beside them (each size a worker ever
    sampled used to keep one until it stopped)."""
    decoders = _DECODERS.setdefault(prior, {})
    wanted = {batch, *keep}
    for stale in [key for key in decoders if key[0] not in wanted]:
        del decoders[stale]  # its cache and graphs go before new ones are allocated
    key = (batch, options)
    decoder = decoders.get(key)
    if decoder is None:
        decoder = decoders[key] = WindowDecoder(prior, batch, options)
    return decoder


def batch_rows(samples: int, batch: int) -> set[int]:
    """The sizes of the batches `samples` are sampled in, at most `batch` at once."""
    return {min(batch, samples - first) for first in range(0, samples, batch)}
