"""The sampling cascade: Jukebox's four modes over windowed priors, resumable after every window.

`Cascade.sample(request, state=None, …)` runs the levels top first, each in windows of n_ctx
tokens advancing by a hop (spec §4). After every window the codes so far form a `CascadeState`
that serialises to bytes; sampling from a saved state gives the same final codes as an unbroken
run, because each window's random draws come from a generator seeded by (seed, level, window)
(or, in `rng="reference"` mode, from one generator whose state is saved with the codes: the
reference's RNG order, kept for parity tests against jukebox-infer). With `overlap_levels` a lower
level's windows start while the level above still samples (sampler/jukebox/schedule.py): the same
codes, since every window has its own seed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import numbers
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import torch
from torch import Tensor

from sampler.jukebox.checkpoint import load_error_cause
from sampler.jukebox.labels import (
    Label,
    LabelConfig,
    LabelError,
    Labeller,
    LabelVersion,
    UnknownArtist,
    UnknownGenre,
    Vocabulary,
)
from sampler.jukebox.prior import Conditioning, JukeboxPrior, PriorConfig, SamplingState
from sampler.jukebox.registry import MIN_TEMPERATURE, SAMPLE_RATE, SEED_LIMIT
from sampler.jukebox.vqvae import VQVAE, code_range, is_integer_dtype
from sampler.jukebox.windows import Window, cond_span, plan_level
from sampler.units import whole_number
from sampler.user_text import quote_user_text

if TYPE_CHECKING:
    from sampler.jukebox.decoding import DecodeOptions

Mode = Literal["ancestral", "primed", "continue", "upsample"]
RngMode = Literal["window", "reference"]
MODES: tuple[str, ...] = ("ancestral", "primed", "continue", "upsample")
RNG_MODES: tuple[str, ...] = ("window", "reference")
# Samples one request takes (each holds its codes for the whole song): far more than a GPU batches.
MAX_SAMPLES_PER_REQUEST = 1024
STATE_FORMAT = 1
# The reference's prefill chunks per level (finest first): known tokens fed 32 or 16 at a time.
REFERENCE_CHUNK_SIZE: tuple[int, int, int] = (32, 32, 16)
ONE_PASS = 0  # a chunk size of 0: a window's whole known part in one prefill pass


class SamplingError(ValueError):
    """A request that cannot be sampled; raised before any sampling, the message says why."""


class NonFiniteLogits(SamplingError):
    """A prior's logits were not numbers (NaN or infinite) for some samples of a window: in half
    precision a large activation overflows. Found at the window's end (one read-back per window);
    the draws meanwhile stayed in range, so nothing crashed on the device."""

    def __init__(self, window: Window, rows: int, samples: int) -> None:
        super().__init__(
            f"the level-{window.level} prior's outputs were not numbers (NaN or infinite) for {rows} of "
            f"{samples} samples in window {window.index + 1} of that level"
        )
        self.window = window


class SamplingCancelled(Exception):
    """`should_stop` asked to stop. `state` holds every finished window (resume from it)."""

    def __init__(self, state: CascadeState) -> None:
        super().__init__("sampling was stopped")
        self.state = state


@dataclass(frozen=True)
class SampleStyle:
    """What one sample's labels say: its artist, genre(s) (space-separated words) and lyrics."""

    artist: str = "unknown"
    genre: str = "unknown"
    lyrics: str = ""


@dataclass(frozen=True)
class SamplingRequest:
    """What to sample. Lengths are raw audio samples at the model's sample rate.

    `sample_length` is the length of the result (for `primed` it includes the prompt; for
    `continue` it includes the codes given). `total_length` is the song length the labels claim
    (timing conditioning and lyric windows); it must be at least `sample_length` and at least
    the top prior's minimum duration. Per-level tuples are indexed by level (0 = finest).
    `styles` gives each sample its own labels (a style sweep, in one batch); None: every sample
    has `artist`, `genre` and `lyrics`. `chunk_size` is how many known tokens of a window each
    prefill pass takes, per level (`ONE_PASS`: all of them); None: `default_chunk_size` of the
    cascade's device.
    """

    mode: Mode
    sample_length: int
    total_length: int
    n_samples: int = 1
    artist: str = "unknown"
    genre: str = "unknown"
    lyrics: str = ""
    styles: tuple[SampleStyle, ...] | None = None
    levels: tuple[int, ...] = (0, 1, 2)
    temperature: tuple[float, float, float] = (0.99, 0.99, 0.99)
    hop_fraction: tuple[float, float, float] = (0.5, 0.5, 0.125)
    top_k: int = 0
    top_p: float = 0.0
    max_batch_size: tuple[int, int, int] = (16, 16, 3)
    chunk_size: tuple[int, int, int] | None = None
    seed: int = 0
    rng: RngMode = "window"
    # primed: prompt audio (n_samples, T) float in [-1, 1]; its codes at every level are continued.
    prompt: Tensor | None = None
    # continue / upsample: codes per level (finest first), each (n_samples, T_l) or None.
    codes: tuple[Tensor | None, ...] | None = None

    def sample_styles(self) -> tuple[SampleStyle, ...]:
        """One style per sample, in row order."""
        if self.styles is not None:
            return self.styles
        return (SampleStyle(self.artist, self.genre, self.lyrics),) * self.n_samples


@dataclass(frozen=True)
class LevelProgress:
    """Where one level of a request stands."""

    level: int
    window: int  # the window being sampled (or next), 1..window_count; window_count once finished
    window_count: int
    tokens_done: int  # new tokens of this level sampled so far
    tokens_total: int  # new tokens this level samples in all
    sampling: bool  # a window of this level is being sampled now (not: waiting, finished, not begun)


@dataclass(frozen=True)
class Progress:
    """Reported per chunk of sampled tokens, by the level that sampled them."""

    level: int
    # The window being sampled, counted 1..window_count over the windows this level samples (in
    # primed/continue mode windows whose tokens are all known are not counted); shown as is.
    window: int
    window_count: int
    tokens_done: int  # new tokens of this level sampled so far
    tokens_total: int  # new tokens this level samples in all
    levels: tuple[int, ...]  # the levels this request samples, top first
    # Every level of `levels` as it stands now, top first. When levels overlap, several are `sampling`.
    by_level: tuple[LevelProgress, ...] = ()


@dataclass
class CascadeState:
    """Codes so far plus where sampling stands; `to_bytes`/`from_bytes` round-trip it."""

    codes: list[Tensor]  # per level, (N, T_l) int64 on the CPU
    # Per level: tokens known when the level started (its window plan depends on it) and
    # windows finished.
    level_base: dict[int, int] = field(default_factory=dict)
    windows_done: dict[int, int] = field(default_factory=dict)
    rng_state: Tensor | None = None  # rng="reference": the generator after the last window
    # What the request it was sampled for holds (`Cascade.request_digest`: one hash per field), so that
    # it is never resumed by another request. None: saved by an earlier version, compared with nothing.
    request_digest: dict[str, str] | None = None

    def snapshot(self) -> CascadeState:
        """A copy that later windows leave alone (sampling replaces code tensors, never writes into them)."""
        return CascadeState(
            list(self.codes),
            dict(self.level_base),
            dict(self.windows_done),
            self.rng_state,
            None if self.request_digest is None else dict(self.request_digest),
        )

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        torch.save(
            {
                "format": STATE_FORMAT,
                "codes": [codes.to(torch.int16) for codes in self.codes],
                "level_base": dict(self.level_base),
                "windows_done": dict(self.windows_done),
                "rng_state": self.rng_state,
                # a key earlier versions do not read: they still load the state
                "request_digest": None if self.request_digest is None else dict(self.request_digest),
            },
            buffer,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> CascadeState:
        """The state `to_bytes` wrote; SamplingError for bytes that are not one (damaged, another
        program's, or made to use far more memory than they take: compressed, or codes that claim more
        values than the bytes hold)."""
        _refuse_compressed(data)
        try:
            raw = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except Exception as exc:  # torch's own text may advise weights_only=False: only the cause
            raise SamplingError(f"the saved sampling state is unreadable ({load_error_cause(exc)})") from None
        if not isinstance(raw, dict) or raw.get("format") != STATE_FORMAT:
            raise SamplingError("the saved sampling state has an unknown format")
        try:
            digest = raw.get("request_digest")  # absent from the states of earlier versions
            if digest is not None:
                digest = {str(k): str(v) for k, v in digest.items()}
            return cls(
                codes=_saved_codes(raw["codes"], len(data)),
                level_base={int(k): _saved_count(v, "level_base") for k, v in raw["level_base"].items()},
                windows_done={
                    int(k): _saved_count(v, "windows_done") for k, v in raw["windows_done"].items()
                },
                rng_state=raw["rng_state"],
                request_digest=digest,
            )
        except SamplingError:
            raise
        except (KeyError, TypeError, AttributeError, ValueError) as exc:  # damaged, or another version's
            raise SamplingError(
                f"the saved sampling state is incomplete ({type(exc).__name__}: {exc})"
            ) from None


def _refuse_compressed(data: bytes) -> None:
    """`torch.save` stores its entries uncompressed; a compressed one could unpack to gigabytes."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            compressed = [
                info.filename for info in archive.infolist() if info.compress_type != zipfile.ZIP_STORED
            ]
    except (zipfile.BadZipFile, ValueError, EOFError):  # not a zip: torch.load says what is wrong
        return
    if compressed:
        raise SamplingError(
            f"the saved sampling state holds compressed entries ({compressed[0]}), which states never "
            "have: these bytes were not written by CascadeState.to_bytes"
        )


def _saved_codes(saved: object, size: int) -> list[Tensor]:
    """A saved state's codes as int64; SamplingError for values that are not whole numbers, and for
    codes that claim more values than `size` bytes could hold (a tensor viewing one value many times)."""
    if not isinstance(saved, (list, tuple)):
        raise SamplingError(f"the saved sampling state's codes are {_describe(saved)}, not a list of tensors")
    for level, codes in enumerate(saved):
        if not isinstance(codes, Tensor):
            raise SamplingError(
                f"the saved sampling state's level-{level} codes are {_describe(codes)}, not a tensor"
            )
        if not is_integer_dtype(codes.dtype):
            raise SamplingError(
                f"the saved sampling state is damaged: its level-{level} codes are {codes.dtype}, "
                "not whole numbers"
            )
    if sum(codes.numel() * codes.element_size() for codes in saved) > size:
        raise SamplingError(
            f"the saved sampling state is damaged: its codes claim more values than its {size:,} bytes hold"
        )
    return [codes.long() for codes in saved]


def _saved_count(value: object, table: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SamplingError(f"the saved sampling state is damaged: its {table} holds {value!r}, not a count")
    return value


_T = TypeVar("_T")


def _whole(value: object, name: str) -> int:
    """`value` as an int (`whole_number`); SamplingError naming `name` otherwise."""
    number = whole_number(value)
    if number is None:
        raise SamplingError(f"{name} must be a whole number, got {value!r}")
    return number


def _number(value: object, name: str) -> float:
    """`value` as a finite float (an int or float, numpy's too, not a bool); SamplingError otherwise."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise SamplingError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int or Fraction past float's range: no finite number
        number = math.inf
    if not math.isfinite(number):
        raise SamplingError(f"{name} must be a finite number, got {value!r}")
    return number


def _is_integer(tensor: Tensor) -> bool:
    """Whole-number ids with values to read (a meta tensor has none)."""
    return is_integer_dtype(tensor.dtype) and tensor.device.type != "meta"


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _plain_numbers(request: SamplingRequest) -> SamplingRequest:
    """`request` (which passed `check`) with Python ints and floats where it may hold numpy's, and
    tuples where it may hold lists: the same request, for the code that reads it."""
    return dataclasses.replace(
        request,
        sample_length=int(request.sample_length),
        total_length=int(request.total_length),
        n_samples=int(request.n_samples),
        levels=tuple(int(level) for level in request.levels),
        temperature=tuple(float(t) for t in request.temperature),  # type: ignore[arg-type]
        hop_fraction=tuple(float(h) for h in request.hop_fraction),  # type: ignore[arg-type]
        top_k=int(request.top_k),
        top_p=float(request.top_p),
        max_batch_size=tuple(int(b) for b in request.max_batch_size),  # type: ignore[arg-type]
        chunk_size=None if request.chunk_size is None else tuple(int(c) for c in request.chunk_size),  # type: ignore[arg-type]
        seed=int(request.seed),
        styles=None if request.styles is None else tuple(request.styles),
    )


def _tensor_digest(tensor: Tensor, dtype: torch.dtype) -> str:
    """A hash of what `tensor` holds, as `dtype` (so that an int32 and an int64 copy hash alike)."""
    data = tensor.detach().to("cpu", dtype).contiguous()
    digest = hashlib.sha256(repr(tuple(data.shape)).encode())
    digest.update(data.numpy().tobytes())
    return digest.hexdigest()


def default_chunk_size(device: torch.device | str, rng: RngMode) -> tuple[int, int, int]:
    """The prefill chunking of a request that names none: the reference's chunks on the CPU and
    for rng="reference" (parity runs round as jukebox-infer does); one pass on an accelerator,
    where each chunk costs a pass of kernel launches for a few tokens of work."""
    if torch.device(device).type == "cpu" or rng == "reference":
        return REFERENCE_CHUNK_SIZE
    return (ONE_PASS, ONE_PASS, ONE_PASS)


def window_seed(seed: int, level: int, window: int) -> int:
    """The seed of one window's draws: mixed from the job seed, the level and the window index."""
    mixed = np.random.SeedSequence([seed & 0xFFFFFFFFFFFFFFFF, level, window]).generate_state(2, np.uint32)
    return int(mixed[0]) << 32 | int(mixed[1])


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 0.0) -> Tensor:
    """Top-k or nucleus filtering as the reference does, with a bool mask (its uint8 one crashes)."""
    if top_k and top_p:
        raise SamplingError("use top_k or top_p, not both")
    if top_k > 0:
        top_k = min(top_k, logits.shape[-1])
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p > 0.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        remove_sorted = torch.cumsum(torch.softmax(sorted_logits, dim=-1), dim=-1) > top_p
        # keep the first token over the threshold, and always the most likely one
        remove_sorted[..., 1:] = remove_sorted[..., :-1].clone()
        remove_sorted[..., 0] = False
        remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, -math.inf)
    return logits


def add_row_totals(total: Tensor, row_totals: Tensor | None) -> None:
    """Add each row's `total` (N, 1), a logsumexp of its logits or the sum of its softmax, into
    `row_totals` (N,) float64: one in-place add per token on the device, nothing read back. A total that
    is not a finite number (a NaN or an infinity among the logits, or every one -inf: no distribution)
    leaves the row's sum not finite for good, which `rows_not_finite` reads once per window."""
    if row_totals is not None:
        row_totals.add_(total[:, 0])


def rows_not_finite(row_totals: Tensor) -> Tensor:
    """The rows (N,) whose logits were no distribution at some token (see `add_row_totals`)."""
    return ~row_totals.isfinite()


def draw(logits: Tensor, generator: torch.Generator, row_totals: Tensor | None = None) -> Tensor:
    """One categorical draw per row (N, bins) -> (N,), with the exact arithmetic of
    `torch.distributions.Categorical(logits=…).sample()` so reference RNG streams line up.

    A row that is no distribution (NaN logits) shows in `row_totals` (`add_row_totals`) and draws an id
    in range: on CUDA from a uniform row instead (its multinomial asserts on NaN, which ends the device
    context); on the CPU argmax picks one even from NaN.
    """
    total = logits.logsumexp(dim=-1, keepdim=True)
    normalised = logits - total
    probs = torch.softmax(normalised, dim=-1)
    add_row_totals(total, row_totals)
    if probs.device.type != "cpu" or probs.device != generator.device:
        probs = probs.masked_fill(~total.isfinite(), 1.0)  # a finite row keeps its bits
        return torch.multinomial(probs, 1, True, generator=generator)[:, 0]
    # What CPU `multinomial(probs, 1, replacement=True)` computes, without its input checks:
    # argmax(probs / Exp(1) noise). Same generator draws, same result (tests/…/test_sampling_speed.py).
    noise = torch.empty_like(probs).exponential_(generator=generator)
    return probs.div_(noise).argmax(dim=-1)


def draw_fast(logits: Tensor, generator: torch.Generator, row_totals: Tensor | None = None) -> Tensor:
    """One categorical draw per row (N, bins) -> (N,) by inverting the CDF with one uniform per row.

    The same distribution as `draw` from far fewer random numbers (N instead of N·bins), so a
    different stream: used when the draws need not match the reference (rng="window"). The CDF is
    accumulated in fp64 so that u·total < total always, and zero-probability ids (filtered) are
    never picked.
    """
    u = torch.rand(logits.shape[0], 1, dtype=torch.float64, generator=generator, device=generator.device)
    return invert_cdf(logits, u.to(logits.device), row_totals)


def invert_cdf(logits: Tensor, u: Tensor, row_totals: Tensor | None = None) -> Tensor:
    """The ids (N,) whose interval of the CDF of softmax(logits) (N, bins) holds u·total, u (N, 1) fp64
    uniforms in [0, 1): `draw_fast` given its uniforms.

    A row that is no distribution (NaN logits: its CDF is NaN, and the search finds no id) shows in
    `row_totals` (`add_row_totals`) and gets the last id, in range: an id past the embedding would end
    the device context on CUDA. A finite row's u·total < total always finds an id in range, so the clamp
    changes none of them."""
    cdf = torch.softmax(logits, dim=-1).cumsum(dim=-1, dtype=torch.float64)
    total = cdf[:, -1:]  # NaN when any probability is (a softmax gives no infinity)
    add_row_totals(total, row_totals)
    ids = torch.searchsorted(cdf, u.mul(total), right=True)[:, 0]
    return ids.clamp_(max=logits.shape[-1] - 1)


def prefill_known(
    prior: JukeboxPrior,
    state: SamplingState,
    ids: Tensor,
    chunk_size: int,
    between: Callable[[], None] | None = None,
) -> None:
    """Feed a window's known ids (N, k) to `state`, `chunk_size` per prefill pass (`ONE_PASS`: all).
    `between()` runs between two passes and may raise to stop: thousands of known ids take most of an
    hour in chunks on a CPU, which a cancel (and the worker's watch for a hung sampler) must not wait on.

    The ids are the cascade's own (sampled, or encoded from the prompt) or given codes that `check`
    validated, so their range is not checked again: that would read values back from the device.
    """
    size = chunk_size if chunk_size != ONE_PASS else max(ids.shape[1], 1)
    for first in range(0, ids.shape[1], size):
        if first and between is not None:
            between()
        prior.prefill(state, ids[:, first : first + size], check_ids=False)


def sample_steps(
    prior: JukeboxPrior,
    state: SamplingState,
    count: int,
    temperature: float,
    top_k: int,
    top_p: float,
    generator: torch.Generator,
    report: Callable[[int], None] | None = None,
    progress_every: int = 32,
    *,
    exact: bool = True,
    uniforms: Tensor | None = None,
    row_totals: Tensor | None = None,
) -> Tensor:
    """The per-token loop: `count` × (prior step → logits / temperature → filter → draw).

    `state` comes from `prior.start`/`prefill`; returns the drawn ids (N, count). `report(done)` runs
    every `progress_every` tokens and after the last one. `exact` draws as the reference does
    (`draw`); otherwise with the cheaper `draw_fast` (another random stream, same distribution),
    or, given `uniforms` (count, N, 1) fp64, by inverting the CDF at those (draw_fast's stream
    when they were drawn from the same generator in one go). Rows whose logits were not numbers at
    some step show in `row_totals` (N,) float64 (`add_row_totals`).
    """
    if count <= 0:
        raise SamplingError(f"the number of tokens to sample must be positive, got {count}")
    if uniforms is not None and exact:
        raise SamplingError("the exact (reference) draw takes no uniforms: it draws from the generator")
    if uniforms is not None and uniforms.shape[0] != count:
        raise SamplingError(f"{count} rows of uniforms expected, got {tuple(uniforms.shape)}")
    pick = draw if exact else draw_fast
    out = []
    token: Tensor | None = None
    step_once = prior.step_in_inference_mode
    with torch.inference_mode():
        for step in range(count):
            # ids fed back were drawn from this prior's own logits: no per-step range check
            logits = step_once(state, token, check_ids=False)
            if temperature != 1.0:  # x / 1.0 is x: skipping it changes no bits
                logits.div_(temperature)
            logits = filter_logits(logits, top_k, top_p)
            if uniforms is None:
                token = pick(logits.float(), generator, row_totals)
            else:
                if step == 0:  # to the logits' device once, not per token
                    uniforms = uniforms.to(logits.device)
                token = invert_cdf(logits.float(), uniforms[step], row_totals)
            out.append(token)
            if report is not None and ((step + 1) % progress_every == 0 or step + 1 == count):
                report(step + 1)
        return torch.stack(out, dim=1)


class PriorSource:
    """Hands the cascade the prior of a level on the sampling device, and takes it back.

    The default keeps every prior given; a worker short of memory passes a source that loads
    each level's prior when asked and frees it on release.
    """

    def __init__(self, priors: Sequence[JukeboxPrior | None]) -> None:
        self._priors = list(priors)

    def config(self, level: int) -> PriorConfig:
        prior = self._priors[level]
        if prior is None:
            raise SamplingError(f"no prior for level {level}")
        return prior.config

    def acquire(self, level: int) -> JukeboxPrior:
        prior = self._priors[level]
        if prior is None:
            raise SamplingError(f"no prior for level {level}")
        return prior

    def release(self, level: int) -> None:
        """Called when the cascade is done with a level."""


def label_config(config: PriorConfig) -> LabelConfig:
    return LabelConfig(
        version=LabelVersion.V3 if config.labels_v3 else LabelVersion.V2,
        max_bow_genre_size=config.max_bow_genre_size,
        n_tokens=config.n_tokens if config.use_tokens else 0,
        n_ctx=config.n_ctx,
        raw_to_tokens=config.raw_to_tokens,
    )


def continued_codes_length(
    codes: Sequence[Tensor | None] | None, hops: Sequence[int], levels: Sequence[int], sample_length: int
) -> int | None:
    """Continue mode's one rule (the Model API's and `jukebot sample`'s): the length the codes of the
    highest level asked cover when every level asked already covers `sample_length`, so that there
    is nothing to add; None when some level asked has something to sample (or no codes are given).
    Top codes alone with lower levels asked are upsampled."""
    have = 0
    for level in sorted(levels):
        given = None if codes is None else codes[level]
        have = 0 if given is None else given.shape[1] * hops[level]
        if have < sample_length:
            return None
    return have


class Cascade:
    """A VQ-VAE plus one prior per level, sampled top first."""

    def __init__(
        self,
        vqvae: VQVAE,
        priors: PriorSource | Sequence[JukeboxPrior | None],
        *,
        device: torch.device | str = "cpu",
        ids_dir: str | None = None,
        decode: DecodeOptions | None = None,
        name: str | None = None,
    ) -> None:
        from sampler.jukebox.decoding import default_decode_options  # decoding imports this module

        self.vqvae = vqvae
        self.name = name  # the model's registry name (`load_cascade`), part of each state's request digest
        self.priors = priors if isinstance(priors, PriorSource) else PriorSource(priors)
        self.device = torch.device(device)
        self.levels = vqvae.config.levels
        self.hops = vqvae.hop_lengths
        self.sample_rate = SAMPLE_RATE
        self._labellers = [
            Labeller(label_config(self.priors.config(level)), ids_dir) for level in range(self.levels)
        ]
        # How rng="window" samples (`sampler.jukebox.decoding`); the exact draw takes the sliced loop.
        self.decode_options = default_decode_options(self.device) if decode is None else decode

    def warm_up(self, batch_sizes: Sequence[int], done_one: Callable[[], None] = lambda: None) -> None:
        """Build the persistent decoder of every level's prior now (compile, capture), level L's for a
        batch of `batch_sizes[L]`, so that the first job does not wait for it; `done_one` after each
        level's. Nothing to do on the sliced path."""
        from sampler.jukebox.decoding import window_decoder

        if self.decode_options.path == "sliced":
            return
        for level in range(self.levels):
            prior = self.priors.acquire(level)
            window_decoder(prior, batch_sizes[level], self.decode_options).prepare()
            self.priors.release(level)
            done_one()

    # ---- validation

    def check(self, request: SamplingRequest, state: CascadeState | None = None) -> None:
        """Raise SamplingError for a request that cannot be sampled, before any work is done: a field of
        the wrong type (whole numbers, finite numbers, one value per level of the model), out of
        range, or that this model cannot sample. `state`: one the request will resume (checked on its
        own by `check_state`), whose codes count for a level above those sampled (a preview's state
        goes on with only the lower levels)."""
        if not isinstance(request, SamplingRequest):
            raise SamplingError(f"the request must be a SamplingRequest, got {type(request).__name__}")
        top = self.levels - 1
        top_config = self.priors.config(top)
        top_hop = self.hops[top]
        if not isinstance(request.mode, str) or request.mode not in MODES:
            raise SamplingError(f"unknown mode {request.mode!r}: use one of {', '.join(MODES)}")
        if not isinstance(request.rng, str) or request.rng not in RNG_MODES:
            raise SamplingError(f"unknown rng {request.rng!r}: use one of {', '.join(RNG_MODES)}")
        n_samples = _whole(request.n_samples, "n_samples")
        if not 1 <= n_samples <= MAX_SAMPLES_PER_REQUEST:
            raise SamplingError(f"n_samples must be from 1 to {MAX_SAMPLES_PER_REQUEST:,}, got {n_samples}")
        sample_length = _whole(request.sample_length, "sample_length")
        total_length = _whole(request.total_length, "total_length")
        seed = _whole(request.seed, "seed")
        if not 0 <= seed < SEED_LIMIT:
            raise SamplingError(f"seed must be from 0 to 2**64 - 1, got {seed}")
        top_k = _whole(request.top_k, "top_k")
        top_p = _number(request.top_p, "top_p")
        temperatures = self._per_level(request.temperature, "temperature", _number)
        hop_fractions = self._per_level(request.hop_fraction, "hop_fraction", _number)
        batch_sizes = self._per_level(request.max_batch_size, "max_batch_size", _whole)
        chunk_sizes = (
            [] if request.chunk_size is None else self._per_level(request.chunk_size, "chunk_size", _whole)
        )
        if not isinstance(request.levels, (tuple, list)):
            raise SamplingError(
                f"levels must be a tuple of levels, e.g. (2,) or (0, 1, 2); got {request.levels!r}"
            )
        levels = tuple(sorted({_whole(level, "each of levels") for level in request.levels}))
        if not levels or any(not 0 <= level < self.levels for level in levels):
            raise SamplingError(f"levels must be a non-empty subset of 0..{top}, got {request.levels}")
        self._check_styles(request, n_samples)
        if sample_length <= 0 or sample_length % top_hop:
            raise SamplingError(
                f"sample_length must be a positive multiple of {top_hop} samples, got {sample_length}"
            )
        if total_length < sample_length:
            raise SamplingError(
                f"total_length ({total_length}) must be at least sample_length ({sample_length})"
            )
        min_total = math.ceil((top_config.min_duration or 0.0) * self.sample_rate)
        if total_length < min_total:
            raise SamplingError(
                f"this model needs a total length of at least {top_config.min_duration:g} s "
                f"({min_total} samples); got {total_length / self.sample_rate:.2f} s"
            )
        max_total = (top_config.max_duration or math.inf) * self.sample_rate
        if top_config.max_duration and total_length >= max_total:
            raise SamplingError(
                f"this model handles songs shorter than {top_config.max_duration:g} s; "
                f"got {self._seconds(total_length)}"
            )
        if any(style.lyrics.strip() for style in request.sample_styles()) and not top_config.use_tokens:
            raise SamplingError("this model has no lyrics conditioning: leave the lyrics empty")
        if top_k and top_p:
            raise SamplingError("use top_k or top_p, not both")
        bins = self.vqvae.config.l_bins
        if not 0 <= top_k <= bins or not 0.0 <= top_p <= 1.0:
            raise SamplingError(f"top_k must be from 0 to {bins} (the codebook's size) and top_p in [0, 1]")
        for level, temperature in enumerate(temperatures):
            if temperature < MIN_TEMPERATURE:
                raise SamplingError(
                    f"the temperature of level {level} must be at least {MIN_TEMPERATURE:g}, "
                    f"got {temperature!r}"
                )
        if any(not 0 < h <= 1 for h in hop_fractions):
            raise SamplingError("hop fractions must be in (0, 1]")
        for level, fraction in enumerate(hop_fractions):
            n_ctx = self.priors.config(level).n_ctx
            if int(fraction * n_ctx) < 1:  # `plan` moves each window by this many tokens
                raise SamplingError(
                    f"the hop fraction of level {level} ({fraction:g}) moves its {n_ctx}-token window by "
                    f"less than one token: give at least {1 / n_ctx:.6g}"
                )
        if any(b < 1 for b in batch_sizes):
            raise SamplingError("max_batch_size must be at least 1")
        if any(c < 0 for c in chunk_sizes):
            raise SamplingError(f"chunk_size must be at least 1, or {ONE_PASS} for one pass")
        if request.mode == "upsample" and top in levels:
            raise SamplingError("upsample samples the lower levels only: leave the top level out")
        # Given to another mode they went unused: a song forgot its prompt without a word.
        if request.prompt is not None and request.mode != "primed":
            raise SamplingError(
                f"a prompt is sampled from in mode 'primed' only, and this request's mode is "
                f"{request.mode!r}: set mode='primed', or leave the prompt out"
            )
        if request.codes is not None and request.mode not in ("continue", "upsample"):
            raise SamplingError(
                f"codes are used in modes 'continue' and 'upsample' only, and this request's mode is "
                f"{request.mode!r}: set one of them, or leave the codes out"
            )
        if request.mode == "primed":
            self._check_prompt(request, n_samples, sample_length)
        if request.mode in ("continue", "upsample"):
            self._check_codes(request, n_samples, sample_length)
        if request.mode == "continue":
            self._check_something_to_add(request, levels, sample_length)
        # Every sampled level below the top is conditioned on the whole length of the level above.
        for level in levels:
            if level == top:
                continue
            config = self.priors.config(level)
            window_samples = config.n_ctx * self.hops[level]
            if sample_length < window_samples:
                raise SamplingError(
                    f"upsampling level {level} needs at least one full window "
                    f"({window_samples / self.sample_rate:.2f} s) of codes above; "
                    f"got {sample_length / self.sample_rate:.2f} s"
                )
            if level + 1 not in levels:
                hop = self.hops[level + 1]
                have = self._known_tokens(request, state, level + 1)
                if have < sample_length // hop:
                    raise SamplingError(
                        f"level {level} is conditioned on level {level + 1}, whose codes cover "
                        f"{have:,} of the {sample_length // hop:,} tokens asked "
                        f"({self._seconds(have * hop)} of {self._seconds(sample_length)})"
                    )

    def _known_tokens(self, request: SamplingRequest, state: CascadeState | None, level: int) -> int:
        """Tokens of `level` known before sampling: the codes given, or those of `state` (read with care:
        `check_state` has not checked it yet)."""
        given = self._given_codes(request, level)
        known = 0 if given is None else given.shape[1]
        codes = getattr(state, "codes", None)
        if isinstance(codes, list) and len(codes) == self.levels:
            saved = codes[level]
            if isinstance(saved, Tensor) and saved.dim() == 2:
                known = max(known, saved.shape[1])
        return known

    def _seconds(self, samples: int) -> str:
        """`samples` at the model's rate, for messages (a length past float's range by its digits)."""
        try:
            return f"{samples / self.sample_rate:.2f} s"
        except OverflowError:
            return f"a {len(str(samples))}-digit number of samples"

    def _per_level(self, values: object, name: str, convert: Callable[[object, str], _T]) -> list[_T]:
        """One value per level of the model, each through `convert` (SamplingError naming it otherwise)."""
        if not isinstance(values, (tuple, list)):
            raise SamplingError(
                f"{name} must be a tuple of one value per level ({self.levels}), got {values!r}"
            )
        if len(values) != self.levels:
            raise SamplingError(
                f"{name} must hold one value per level ({self.levels}), got {len(values)}: {tuple(values)}"
            )
        return [convert(value, f"the {name} of level {level}") for level, value in enumerate(values)]

    def _check_styles(self, request: SamplingRequest, n_samples: int) -> None:
        if request.styles is not None:
            if not isinstance(request.styles, (tuple, list)) or not all(
                isinstance(style, SampleStyle) for style in request.styles
            ):
                raise SamplingError(
                    f"styles must be a tuple of SampleStyle(artist, genre, lyrics), got {request.styles!r}"
                )
            if len(request.styles) != n_samples:
                raise SamplingError(
                    f"give one style per sample: {len(request.styles)} styles for {n_samples} samples"
                )
        for index, style in enumerate(request.sample_styles()):
            for name in ("artist", "genre", "lyrics"):
                value = getattr(style, name)
                if not isinstance(value, str):
                    what = name if request.styles is None else f"the {name} of style {index}"
                    raise SamplingError(f"{what} must be text, got {value!r}")
        self._label_spellings(request)

    def _vocabulary(self) -> Vocabulary:
        """The artists and genres of the top prior's label tables, which `jukebot sample` checks names
        against too."""
        top = self._labellers[self.levels - 1]
        return Vocabulary.for_version(top.config.version, top.ids_dir)

    def _label_spellings(self, request: SamplingRequest) -> list[tuple[str, str]]:
        """Each sample's (artist, genre) as the labels must read them (`Vocabulary.label_spellings`):
        SamplingError for a name the model does not know, which the labels would read as 'unknown'."""
        vocabulary = self._vocabulary()
        spelled: dict[tuple[str, str], tuple[str, str]] = {}
        for index, style in enumerate(request.sample_styles()):
            named = (style.artist, style.genre)
            if named in spelled:
                continue
            try:
                spelled[named] = vocabulary.label_spellings(*named)
            except LabelError as exc:
                where = "" if request.styles is None else f"style {index}: "
                raise SamplingError(where + self._unknown_label(style, exc)) from None
        return [spelled[(style.artist, style.genre)] for style in request.sample_styles()]

    def _style_ids(self, request: SamplingRequest) -> list[tuple[int, list[int]]] | None:
        """Each sample's artist id and genre ids, as sampling resolves them; None for a request whose
        names do not resolve (it did not pass `check`)."""
        try:
            vocabulary = self._vocabulary()
            return [
                (vocabulary.resolve_artist(style.artist).id, list(vocabulary.resolve_genres(style.genre).ids))
                for style in request.sample_styles()
            ]
        except (LabelError, SamplingError, AttributeError, TypeError):
            return None

    def _unknown_label(self, style: SampleStyle, exc: LabelError) -> str:
        """What `jukebot sample` says of a name its model does not know, in the API's terms."""
        model = self.name or "this model"
        if isinstance(exc, UnknownArtist):
            what, name = "the artist", style.artist
        elif isinstance(exc, UnknownGenre):
            what, name = "the genre", style.genre
            if exc.unknown_word and exc.unknown_word != style.genre:  # v2: one word of several
                what, name = "the genre word", exc.unknown_word
        else:  # too many genres: says how many the model takes
            return str(exc)
        if not name.strip():
            return f"{what} is empty: give one {model} knows, or 'unknown' for none in particular"
        within = f" in {quote_user_text(style.genre)}" if what == "the genre word" else ""
        if exc.suggestions:
            closest = ", ".join(repr(found) for found in exc.suggestions)
            return (
                f"{model} does not know {what} {quote_user_text(name)}{within}: use one of the closest "
                f"({closest}), or 'unknown' for none in particular"
            )
        return (
            f"{model} does not know {what} {quote_user_text(name)}{within} and none is close: check the "
            "spelling, or use 'unknown' for none in particular"
        )

    def _spelled(self, request: SamplingRequest) -> SamplingRequest:
        """`request` (checked) with each artist and genre as the labels must read them."""
        spellings = self._label_spellings(request)
        if request.styles is None:
            artist, genre = spellings[0]
            return dataclasses.replace(request, artist=artist, genre=genre)
        styles = tuple(
            SampleStyle(artist, genre, style.lyrics)
            for (artist, genre), style in zip(spellings, request.styles, strict=True)
        )
        return dataclasses.replace(request, styles=styles)

    def _check_prompt(self, request: SamplingRequest, n_samples: int, sample_length: int) -> None:
        prompt, top_hop = request.prompt, self.hops[-1]
        if prompt is None:
            raise SamplingError("primed mode needs prompt audio")
        if not isinstance(prompt, Tensor) or not prompt.is_floating_point() or prompt.device.type == "meta":
            raise SamplingError(f"the prompt must be a float tensor of audio, got {_describe(prompt)}")
        if prompt.dim() != 2 or prompt.shape[0] != n_samples:
            raise SamplingError(
                f"the prompt must be audio of shape ({n_samples}, samples), got {tuple(prompt.shape)}"
            )
        length = prompt.shape[1]
        if length < top_hop or length % top_hop:
            raise SamplingError(
                f"the prompt must be a positive multiple of {top_hop} samples long, got {length}"
            )
        if length >= sample_length:
            raise SamplingError(
                f"the prompt ({length / self.sample_rate:.2f} s) must be shorter than the sample "
                f"({sample_length / self.sample_rate:.2f} s)"
            )
        # checked once here: a NaN was encoded as silence, a loud prompt as clipped noise
        values = prompt.float()  # float8 has no isfinite
        if not bool(torch.isfinite(values).all()):
            raise SamplingError("the prompt holds NaN or infinite samples: give audio in [-1, 1]")
        peak = float(values.abs().max())
        if peak > 1.0:  # shown with the digits that tell it from 1
            raise SamplingError(f"the prompt must be audio in [-1, 1], its peak is {peak!r}: scale it down")

    def _check_codes(self, request: SamplingRequest, n_samples: int, sample_length: int) -> None:
        if not isinstance(request.codes, (tuple, list)) or len(request.codes) != self.levels:
            raise SamplingError(f"{request.mode} mode needs codes for each of the {self.levels} levels")
        bins = self.vqvae.config.l_bins
        for level, codes in enumerate(request.codes):
            if codes is None:
                continue
            if not isinstance(codes, Tensor) or not _is_integer(codes):
                raise SamplingError(
                    f"the codes of level {level} must be an integer tensor, got {_describe(codes)}"
                )
            if codes.dim() != 2 or codes.shape[0] != n_samples:
                raise SamplingError(
                    f"codes of level {level} must have shape ({n_samples}, tokens), got {tuple(codes.shape)}"
                )
            have = codes.shape[1] * self.hops[level]
            if have > sample_length and request.mode == "continue":
                raise SamplingError(
                    f"continue mode adds to the codes given, but those of level {level} "
                    f"({have / self.sample_rate:.2f} s) are longer than sample_length "
                    f"({sample_length / self.sample_rate:.2f} s): ask for a longer sample_length"
                )
            if have > sample_length:
                raise SamplingError(
                    f"the codes of level {level} are longer than sample_length; cut them or ask for more"
                )
            # checked once here, so that prefilling them reads nothing back from the device
            if codes.numel():
                low, high = code_range(codes)
                if low < 0 or high >= bins:
                    raise SamplingError(f"the codes of level {level} must be in 0..{bins - 1}")

    def _check_something_to_add(
        self, request: SamplingRequest, levels: tuple[int, ...], sample_length: int
    ) -> None:
        """Continue mode with every level asked already whole would hand the codes back unchanged.
        (Upsample mode with whole codes above is its normal use.)"""
        have = continued_codes_length(request.codes, self.hops, levels, sample_length)
        if have is None:
            return
        raise SamplingError(
            f"continue mode adds to the codes given, but those of level {levels[-1]} already cover the "
            f"{have / self.sample_rate:.2f} s of sample_length ({sample_length / self.sample_rate:.2f} s): "
            "ask for a longer sample_length"
        )

    def chunk_size(self, request: SamplingRequest, level: int) -> int:
        """Known tokens per prefill pass at `level` (`ONE_PASS`: all of them)."""
        sizes = request.chunk_size
        if sizes is None:
            sizes = default_chunk_size(self.device, request.rng)
        return sizes[level]

    def _given_codes(self, request: SamplingRequest, level: int) -> Tensor | None:
        if request.codes is None:
            return None
        return request.codes[level]

    # ---- state

    def initial_state(self, request: SamplingRequest, digest: dict[str, str] | None = None) -> CascadeState:
        """Codes every level starts from: empty, the prompt's codes, or the codes given; the state records
        the request's digest (`digest`: its `request_digest`, when already computed)."""
        n = request.n_samples
        if request.mode == "primed":
            assert request.prompt is not None
            prompt = request.prompt.to(self.device, dtype=torch.float32)
            codes = [c.cpu() for c in self.vqvae.encode(prompt, 0, self.levels)]
        elif request.mode in ("continue", "upsample"):
            assert request.codes is not None
            codes = [
                torch.zeros(n, 0, dtype=torch.long) if c is None else c.detach().long().cpu()
                for c in request.codes
            ]
        else:
            codes = [torch.zeros(n, 0, dtype=torch.long) for _ in range(self.levels)]
        rng_state = None
        if request.rng == "reference":
            rng_state = torch.Generator(device=self.device).manual_seed(request.seed).get_state()
        request_digest = self.request_digest(request) if digest is None else dict(digest)
        return CascadeState(codes=codes, rng_state=rng_state, request_digest=request_digest)

    def request_digest(self, request: SamplingRequest) -> dict[str, str]:
        """One hash per field of `request` that decides its codes, kept in the states sampled for it so
        that `check_state` refuses them to another request. Not `levels` (a preview's state goes on to
        the full song, and a run stopped at one level resumes with others), `max_batch_size` or
        `chunk_size` (the same draws in any batching, but for `rng="reference"`, whose draws follow
        its batches), nor the device. The prompt and codes count by what the request holds (in
        upsample mode the input codes, not the state's). Artists and genres count by the ids they
        resolve to ('The Beatles' samples as 'the beatles' does); "styles", their names as the
        labels read them, is kept for states of earlier versions, which lack "style_ids"."""
        try:  # the names as the labels read them: 'celine dion' samples as 'céline dion' does
            spellings = self._label_spellings(request)
        except (SamplingError, AttributeError, TypeError):  # a request that did not pass `check`: as given
            spellings = [(style.artist, style.genre) for style in request.sample_styles()]
        fields: dict[str, Any] = {
            "model": [
                self.name,
                list(self.hops),
                self.vqvae.config.l_bins,
                [self.priors.config(level).n_ctx for level in range(self.levels)],
            ],
            "mode": request.mode,
            "sample_length": int(request.sample_length),
            "total_length": int(request.total_length),
            "n_samples": int(request.n_samples),
            "styles": [
                [artist, genre, style.lyrics]
                for (artist, genre), style in zip(spellings, request.sample_styles(), strict=True)
            ],
            "temperature": [float(t) for t in request.temperature],
            "top_k": int(request.top_k),
            "top_p": float(request.top_p),
            "hop_fraction": [float(h) for h in request.hop_fraction],
            "seed": int(request.seed),
            "rng": request.rng,
        }
        ids = self._style_ids(request)
        if ids is not None:
            fields["style_ids"] = [
                [*labels, style.lyrics] for labels, style in zip(ids, request.sample_styles(), strict=True)
            ]
        if request.rng == "reference":
            fields["max_batch_size"] = [int(size) for size in request.max_batch_size]
        if request.mode == "primed" and request.prompt is not None:
            fields["prompt"] = _tensor_digest(request.prompt, torch.float32)
        if request.mode in ("continue", "upsample") and request.codes is not None:
            fields["codes"] = [
                None if codes is None or not codes.numel() else _tensor_digest(codes, torch.long)
                for codes in request.codes
            ]
        return {
            name: hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
            for name, value in fields.items()
        }

    def check_state(
        self, request: SamplingRequest, state: CascadeState, digest: dict[str, str] | None = None
    ) -> None:
        """Raise SamplingError for a saved state that cannot be this request's: saved for another request
        (its `request` digest differs), damaged, or written by a version that planned its windows
        otherwise; resuming from it would crash at every attempt or give codes of the wrong length.
        `request` passed `check`; `digest`: its `request_digest`, when already computed."""
        if not isinstance(state, CascadeState):
            raise SamplingError(f"it is {_describe(state)}, not a CascadeState")
        if not isinstance(state.codes, list) or not all(isinstance(codes, Tensor) for codes in state.codes):
            raise SamplingError(
                f"its codes must be a list of tensors, one per level, got {_describe(state.codes)}"
            )
        if state.request_digest is not None:
            if not isinstance(state.request_digest, dict):
                raise SamplingError(
                    f"its request digest must be a dict, got {_describe(state.request_digest)}"
                )
            now = self.request_digest(request) if digest is None else digest
            differ = [
                name for name, value in state.request_digest.items() if name in now and now[name] != value
            ]
            if "style_ids" in state.request_digest and "style_ids" in now:
                # Compared by ids: the same artists and genres spelled otherwise are the same styles.
                differ = ["styles" if name == "style_ids" else name for name in differ if name != "styles"]
            if differ:
                raise SamplingError(
                    f"it was saved for another request (other {', '.join(differ)}): start without it"
                )
        if len(state.codes) != self.levels:
            raise SamplingError(f"it holds codes of {len(state.codes)} levels, the model has {self.levels}")
        # The tables first: the codes' length below depends on where each level began.
        for name, table in (("level_base", state.level_base), ("windows_done", state.windows_done)):
            if not isinstance(table, dict):
                raise SamplingError(f"its {name} must be a dict of level: count, got {_describe(table)}")
            for level, count in table.items():
                if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level < self.levels:
                    raise SamplingError(
                        f"its {name} names level {level!r}; the model has levels 0..{self.levels - 1}"
                    )
                if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                    raise SamplingError(f"its {name} of level {level} is {count!r}, not a count from 0 up")
        bins = self.vqvae.config.l_bins
        for level, codes in enumerate(state.codes):
            if not _is_integer(codes):
                raise SamplingError(f"its level-{level} codes are {codes.dtype}, not whole numbers")
            if codes.dim() != 2 or codes.shape[0] != request.n_samples:
                shape = tuple(codes.shape)
                raise SamplingError(
                    f"its level-{level} codes have shape {shape}, not ({request.n_samples}, tokens)"
                )
            longest = request.sample_length // self.hops[level]
            if request.rng == "reference" and longest < self.priors.config(level).n_ctx:
                # the reference's partial window samples the song's length after the known codes
                longest += state.level_base.get(level, 0)
            if codes.shape[1] > longest:
                raise SamplingError(f"its level-{level} codes are longer than the song")
            if codes.numel():
                low, high = code_range(codes)
                if low < 0 or high >= bins:
                    raise SamplingError(
                        f"its level-{level} codes must be in 0..{bins - 1}, found {low}..{high}"
                    )
        for level, base in state.level_base.items():
            if base > state.codes[level].shape[1]:
                raise SamplingError(
                    f"its level-{level} codes hold {state.codes[level].shape[1]} tokens, fewer than the "
                    f"{base} the level began with"
                )
        for level, done in state.windows_done.items():
            windows = self.plan(request, state, level)
            if done > len(windows):
                raise SamplingError(f"it counts {done} windows done at level {level}, more than there are")
            if done and level not in state.level_base:
                raise SamplingError(
                    f"it counts {done} windows done at level {level} but not where the level began"
                )
        for level, base in state.level_base.items():
            done = state.windows_done.get(level, 0)
            expected = base + sum(window.new_tokens for window in self.plan(request, state, level)[:done])
            if state.codes[level].shape[1] != expected:
                raise SamplingError(
                    f"its level-{level} codes hold {state.codes[level].shape[1]} tokens, not the {expected} "
                    f"of its {done} windows done"
                )
        if request.rng == "reference":
            if state.rng_state is None:
                if any(state.windows_done.values()):
                    raise SamplingError(
                        'it holds no random generator state, which rng="reference" needs to resume'
                    )
            else:
                try:
                    torch.Generator(device=self.device).set_state(state.rng_state)
                except (TypeError, RuntimeError):
                    raise SamplingError(
                        f"its random generator state ({_describe(state.rng_state)}) does not fit a "
                        f"generator on {self.device}"
                    ) from None

    def plan(self, request: SamplingRequest, state: CascadeState, level: int) -> list[Window]:
        config = self.priors.config(level)
        total = request.sample_length // self.hops[level]
        hop = int(request.hop_fraction[level] * config.n_ctx)
        base = state.level_base.get(level, state.codes[level].shape[1])
        return plan_level(level, base, total, config.n_ctx, hop, reference_partial=request.rng == "reference")

    # ---- sampling

    def sample(
        self,
        request: SamplingRequest,
        state: CascadeState | None = None,
        *,
        on_progress: Callable[[Progress], None] | None = None,
        on_window: Callable[[CascadeState], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        progress_every: int = 32,
        overlap_levels: bool | None = None,
    ) -> CascadeState:
        """Sample `request`, resuming from `state` when given; returns the final state.

        `state` is checked first (`check_state`: SamplingError when it was saved for another request or
        is damaged) and left alone: sampling goes on in a copy, which it returns.
        `on_window(state)` runs after every finished window (store it to resume later);
        `should_stop()` is polled every `progress_every` tokens and stops with SamplingCancelled.
        `overlap_levels` lets a lower level's windows start while the level above still samples
        (same codes; rng="window" only; default: `schedule.overlap_by_default`). The callbacks never
        run at once, but may run on other threads than the caller's.
        """
        # imported here: the scheduler reads this module's types
        from sampler.jukebox.schedule import LevelScheduler, overlap_by_default

        self.check(request, state)
        request = self._spelled(_plain_numbers(request))
        if isinstance(progress_every, (bool, np.bool_)) or not isinstance(progress_every, (int, np.integer)):
            raise SamplingError(f"progress_every must be a whole number of tokens, got {progress_every!r}")
        if progress_every < 1:
            raise SamplingError(f"progress_every must be at least 1 token, got {progress_every}")
        for name, given in (
            ("on_progress", on_progress),
            ("on_window", on_window),
            ("should_stop", should_stop),
        ):
            if given is not None and not callable(given):  # else it fails only after a window's work
                raise SamplingError(f"{name} must be a function (or None), got {given!r}")
        digest = self.request_digest(request)
        if state is None:
            state = self.initial_state(request, digest)
        else:
            try:
                self.check_state(request, state, digest)
            except SamplingError as exc:
                raise SamplingError(f"the saved sampling state cannot be used: {exc}") from None
            state = state.snapshot()  # the caller's state is left as it was
            state.codes = [codes.to("cpu", torch.long) for codes in state.codes]  # int16 as saved, too
            state.request_digest = dict(digest)  # a state of an earlier version (no digest) gets this one's
            if request.rng == "reference" and state.rng_state is None:  # nothing sampled yet (check_state)
                state.rng_state = torch.Generator(device=self.device).manual_seed(request.seed).get_state()
        overlap = overlap_by_default(self.device) if overlap_levels is None else overlap_levels
        scheduler = LevelScheduler(
            self,
            request,
            state,
            on_progress=on_progress,
            on_window=on_window,
            should_stop=should_stop,
            progress_every=progress_every,
            overlap=overlap,
        )
        return scheduler.run()

    def _sample_window(
        self,
        prior: JukeboxPrior,
        labeller: Labeller,
        labels: Sequence[Label],
        request: SamplingRequest,
        state: CascadeState,
        window: Window,
        generator: torch.Generator,
        report: Callable[[int], None],
        progress_every: int,
    ) -> Tensor:
        """Sample one window for all samples, in batches of max_batch_size; returns (N, new_tokens)."""
        level, config = window.level, prior.config
        known = state.codes[level][:, window.start : window.end]
        z_cond = None
        if config.is_upsampler:
            down = config.cond_downsample
            assert down is not None
            first, end = cond_span(window, config.n_ctx, down)
            z_cond = state.codes[level + 1][:, first:end]
        y = torch.from_numpy(labeller.batch_y(labels, window.start))  # (N, label_length), row i = sample i
        batch = request.max_batch_size[level]
        uniforms = None
        if request.rng == "window":
            # One uniform per token and sample for the whole window, drawn before the rows are split
            # into batches: sample i's draws are then the same whatever the worker's batch size
            # (a job resumed on a worker with another JUKEBOT_MAX_BATCH_SIZE keeps its codes). With a
            # single batch this is the stream the decoder drew itself.
            uniforms = torch.rand(
                (window.new_tokens, request.n_samples, 1),
                dtype=torch.float64,
                generator=generator,
                device=generator.device,
            )
        sampled: list[Tensor] = []
        totals: list[Tensor] = []
        for first_row in range(0, request.n_samples, batch):
            part = slice(first_row, first_row + batch)
            rows = known[part].shape[0]
            cond = prior.get_conditioning(
                y[part].to(self.device), None if z_cond is None else z_cond[part].to(self.device)
            )

            def report_rows(tokens: int, first_row: int = first_row, rows: int = rows) -> None:
                # tokens of the window done, averaged over all samples (batches run one after another)
                report((first_row * window.new_tokens + tokens * rows) // request.n_samples)

            new, row_totals = self._sample_tokens(
                prior,
                cond,
                known[part].to(self.device),
                window,
                request.temperature[level],
                request,
                generator,
                report_rows,
                progress_every,
                self.chunk_size(request, level),
                None if uniforms is None else uniforms[:, part],
            )
            sampled.append(new)
            totals.append(row_totals)
        # the window's one read-back of its own (its codes go to the host next): a NaN is not sampled on
        bad_rows = int(rows_not_finite(torch.cat(totals)).sum())
        if bad_rows:
            raise NonFiniteLogits(window, bad_rows, request.n_samples)
        return torch.cat(sampled, dim=0)

    def _sample_tokens(
        self,
        prior: JukeboxPrior,
        cond: Conditioning,
        known: Tensor,
        window: Window,
        temperature: float,
        request: SamplingRequest,
        generator: torch.Generator,
        report: Callable[[int], None],
        progress_every: int,
        chunk_size: int,
        uniforms: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The new codes of one batch's window (N, new_tokens), and its rows' totals (N,) float64, not
        finite for a row that drew from logits that were not numbers (`add_row_totals`)."""
        if request.rng == "window" and self.decode_options.path != "sliced":
            from sampler.jukebox.decoding import batch_rows, window_decoder

            sizes = batch_rows(request.n_samples, request.max_batch_size[window.level])
            decoder = window_decoder(prior, known.shape[0], self.decode_options, keep=sizes)
            new = decoder.sample_window(
                cond,
                prior.codes_to_ids(known),
                window.new_tokens,
                temperature,
                request.top_k,
                request.top_p,
                generator,
                report,
                progress_every,
                chunk_size=chunk_size,
                uniforms=uniforms,
            )
            return prior.ids_to_codes(new), decoder.row_totals.clone()
        state = prior.start(cond, window.sample_tokens)
        prefill_known(prior, state, prior.codes_to_ids(known), chunk_size, between=lambda: report(0))
        row_totals = torch.zeros(known.shape[0], dtype=torch.float64, device=self.device)
        ids = sample_steps(
            prior,
            state,
            window.new_tokens,
            temperature,
            request.top_k,
            request.top_p,
            generator,
            report,
            progress_every,
            exact=request.rng == "reference",
            uniforms=uniforms,
            row_totals=row_totals,
        )
        return prior.ids_to_codes(ids), row_totals

    # ---- audio

    def decode(self, codes: Tensor, level: int) -> Tensor:
        """Codes of one level (N, T), of any integer dtype (a state's are int64, saved ones int16), -> audio
        (N, T * hop) float32 in [-1, 1]. VQVAEInputError (a ValueError) for anything else: another type,
        shape or range, no samples (N = 0) or no tokens."""
        audio = self.vqvae.decode(codes, level)  # on the VQ-VAE's device
        return audio.float().clamp(-1.0, 1.0).cpu()
