"""Curation: many clips → one cohesive piece.

The workflow musicians use on neural-synthesis output: trim each clip's leading and trailing
silence, fingerprint it, score every pair, order the clips so that similar ones follow each other,
and join them with short crossfades at even loudness.

- Similarity: Chromaprint fingerprints (through pyacoustid and Debian's libchromaprint1), scored
  as the share of equal fingerprint bits at the best alignment of the two clips. For samples made
  here, `code_similarity` compares their stored Jukebox codes instead and needs no system library.
- Ordering: the full similarity matrix, then greedy nearest neighbour from the most similar pair,
  growing the chain at whichever end has the better next neighbour. (The published scripts pair
  clips through a dict keyed by score, so equal scores overwrite each other; here no pair is lost.)

Torch-free and Discord-free: `jukebot curate` and the bot's curation job both call `curate`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from sampler.audio import DEFAULT_SILENCE_DB, SAMPLE_RATE

MIN_CLIPS = 2
# The longest piece one curation makes (/curate, `jukebot curate`): every clip is decoded into memory
# (~10 MB a minute, a few copies at once), and pieces can be joined again, so without a bound one member
# could exhaust it.
MAX_PIECE_SECONDS = 30 * 60
# Trimming: sound this far under the clip's own peak counts as silence (a quiet take keeps its soft
# intro), never sound over TRIM_FLOOR_DBFS; a clip whose peak is under the silence threshold every
# decode of the bot uses (DEFAULT_SILENCE_DB) is silent.
TRIM_BELOW_PEAK_DB = 50.0
TRIM_FLOOR_DBFS = -80.0
TRIM_MARGIN_S = 0.1  # kept around the sound when trimming
TARGET_RMS_DBFS = -20.0
PEAK_CEILING = 0.99
# A clip's level is capped so that its loudest samples but the top 0.1 % stay under the limiter's
# knee: one click must not set the level of the whole clip. The few over it are shaped softly under
# PEAK_CEILING (`soft_limited`).
ROBUST_PEAK_PERCENTILE = 99.9
LIMIT_KNEE = 0.8 * PEAK_CEILING
CROSSFADE_S = 0.5
# Chromaprint items come about 8 a second; search alignments up to ~3 s apart.
MAX_FINGERPRINT_OFFSET = 24
MIN_FINGERPRINT_OVERLAP = 4
# Chromaprint gives no item for about the first 3 s of audio: a shorter clip (a loop, a one-shot) has an
# empty fingerprint and would score 0.5 against everything. Clips shorter than this are looped to it.
MIN_FINGERPRINT_SECONDS = 6.0

Progress = Callable[[str, int, int], None]  # (stage, done, total)


class CurationError(ValueError):
    """Input curation cannot work on; `str()` says what to change."""


class FingerprintUnavailable(CurationError):
    """Chromaprint is not installed on this machine."""

    def __init__(self, detail: str) -> None:
        super().__init__(
            "Acoustic fingerprints need Chromaprint: install Debian's `libchromaprint1` package "
            f"(apt-get install libchromaprint1) and the `pyacoustid` Python package ({detail})."
        )


@dataclass(frozen=True, slots=True)
class Clip:
    """One clip to curate: a name to report it by and mono float audio at `SAMPLE_RATE`."""

    name: str
    audio: np.ndarray


@dataclass(frozen=True, slots=True)
class CurationResult:
    """The clips' order (indices into the input), each join's similarity, and the joined audio."""

    order: list[int]
    join_scores: list[float]
    audio: np.ndarray
    similarity: np.ndarray  # (n, n), symmetric, diagonal 1

    @property
    def duration_seconds(self) -> float:
        return self.audio.shape[0] / SAMPLE_RATE


def trim_silence(
    audio: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    below_peak_db: float = TRIM_BELOW_PEAK_DB,
    keep_s: float = 0.1,
) -> np.ndarray:
    """Drop leading and trailing samples more than `below_peak_db` under the clip's peak (and under
    TRIM_FLOOR_DBFS), keeping `keep_s` of margin.

    A clip whose peak is under DEFAULT_SILENCE_DB comes back empty: the caller decides what silence
    means for it.
    """
    samples = np.asarray(audio, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"expected mono audio of shape (samples,), got shape {samples.shape}")
    magnitude = np.nan_to_num(np.abs(samples), copy=False, nan=0.0, posinf=0.0)  # one copy: clips are long
    peak = float(magnitude.max()) if magnitude.size else 0.0
    if peak < 10 ** (DEFAULT_SILENCE_DB / 20):
        return samples[:0]
    threshold = max(peak * 10 ** (-below_peak_db / 20), 10 ** (TRIM_FLOOR_DBFS / 20))
    loud = np.flatnonzero(magnitude >= threshold)
    keep = round(keep_s * sample_rate)
    return samples[max(0, int(loud[0]) - keep) : min(samples.shape[0], int(loud[-1]) + 1 + keep)]


def fingerprint(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The raw Chromaprint fingerprint of mono float audio: uint32 items, about 8 a second."""
    try:
        import chromaprint  # pyacoustid's binding; loads libchromaprint when imported
    except (ImportError, OSError) as exc:
        raise FingerprintUnavailable(str(exc) or type(exc).__name__) from None
    pcm = np.round(np.clip(np.nan_to_num(audio), -1.0, 1.0) * 32767.0).astype("<i2")
    printer = chromaprint.Fingerprinter()
    printer.start(sample_rate, 1)
    printer.feed(pcm.tobytes())
    raw, _ = chromaprint.decode_fingerprint(printer.finish())
    return np.asarray(raw, dtype=np.int64).astype(np.uint32)


def looped(audio: np.ndarray, seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """`audio` repeated end to end until it lasts at least `seconds` (as it is when it does already)."""
    wanted = math.ceil(seconds * sample_rate)
    if audio.shape[0] == 0 or audio.shape[0] >= wanted:
        return audio
    return np.tile(audio, math.ceil(wanted / audio.shape[0]))[:wanted]


def fingerprint_similarity(a: np.ndarray, b: np.ndarray, max_offset: int = MAX_FINGERPRINT_OFFSET) -> float:
    """Share of equal bits (0..1) between two fingerprints at their best alignment.

    Identical audio scores 1.0; different music about 0.5 to 0.6 (its bits agree about half the time,
    and the best of the alignments tried adds a little). Chromaprint hears pitch classes, not pitch,
    and changes over time, not sounds: the same notes an octave apart, or two steady tones, or two
    noises (whose bits are mostly alike), score 0.8 to 1.0 without being the same audio.
    Fingerprints too short to overlap score 0.5, i.e. "no evidence either way".
    """
    a, b = np.asarray(a, dtype=np.uint32), np.asarray(b, dtype=np.uint32)
    best = None
    for offset in range(-max_offset, max_offset + 1):
        x, y = (a[offset:], b) if offset >= 0 else (a, b[-offset:])
        overlap = min(x.shape[0], y.shape[0])
        if overlap < MIN_FINGERPRINT_OVERLAP:
            continue
        differing = int(np.bitwise_count(x[:overlap] ^ y[:overlap]).sum())
        score = 1.0 - differing / (32 * overlap)
        best = score if best is None else max(best, score)
    return 0.5 if best is None else best


def code_similarity(a: np.ndarray, b: np.ndarray, bins: int = 2048) -> float:
    """Cosine similarity (0..1) of two code sequences' histograms: what a clip made here is made of."""
    ha = np.bincount(np.asarray(a, dtype=np.int64).clip(0, bins - 1), minlength=bins).astype(np.float64)
    hb = np.bincount(np.asarray(b, dtype=np.int64).clip(0, bins - 1), minlength=bins).astype(np.float64)
    norm = float(np.linalg.norm(ha) * np.linalg.norm(hb))
    return float(ha @ hb / norm) if norm else 0.0


def similarity_matrix(
    features: Sequence[np.ndarray],
    score: Callable[[np.ndarray, np.ndarray], float],
    progress: Progress | None = None,
) -> np.ndarray:
    """Every pair's score once: a symmetric (n, n) matrix with 1 on the diagonal."""
    n = len(features)
    matrix = np.eye(n)
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    for done, (i, j) in enumerate(pairs, start=1):
        matrix[i, j] = matrix[j, i] = score(features[i], features[j])
        if progress is not None:
            progress("comparing", done, len(pairs))
    return matrix


def order_by_similarity(matrix: np.ndarray) -> list[int]:
    """A path through every clip that keeps neighbours similar (greedy nearest neighbour).

    Starts from the most similar pair; then, of the two ends of the chain, the one whose best
    unused neighbour is more similar grows. Ties go to the lower index, so the order is stable.
    """
    n = matrix.shape[0]
    if n < 2:
        return list(range(n))
    off_diagonal = np.where(np.eye(n, dtype=bool), -np.inf, matrix)
    first, second = np.unravel_index(int(np.argmax(off_diagonal)), matrix.shape)
    chain = [int(first), int(second)]
    unused = set(range(n)) - set(chain)
    while unused:
        candidates = sorted(unused)
        head = max(candidates, key=lambda k: (matrix[chain[0], k], -k))
        tail = max(candidates, key=lambda k: (matrix[chain[-1], k], -k))
        if matrix[chain[-1], tail] >= matrix[chain[0], head]:
            chain.append(tail)
            unused.discard(tail)
        else:
            chain.insert(0, head)
            unused.discard(head)
    return chain


def even_loudness(audio: np.ndarray, target_dbfs: float = TARGET_RMS_DBFS) -> np.ndarray:
    """Scale to `target_dbfs` RMS, then down as needed so that all but the loudest 0.1 % of samples
    stay under `LIMIT_KNEE`; those (a click, a pop) are limited softly under `PEAK_CEILING`.

    NaN and infinite samples (a damaged file) count as silence: one would make the gain NaN or 0
    and so mute the whole clip, and with it the crossfades on either side.
    """
    samples = np.asarray(audio, dtype=np.float32)
    if not np.isfinite(samples).all():
        samples = np.nan_to_num(samples, nan=0.0, posinf=0.0, neginf=0.0)
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0
    if rms == 0.0:
        return samples
    gain = 10 ** (target_dbfs / 20) / rms
    loud = float(np.percentile(np.abs(samples), ROBUST_PEAK_PERCENTILE, overwrite_input=True)) * gain
    if loud > LIMIT_KNEE:
        gain *= LIMIT_KNEE / loud
    return soft_limited((samples * gain).astype(np.float32))


def soft_limited(audio: np.ndarray, ceiling: float = PEAK_CEILING, knee: float = LIMIT_KNEE) -> np.ndarray:
    """`audio` (changed in place) with samples over `knee` bent smoothly towards `ceiling`, none past it."""
    magnitude = np.abs(audio)
    over = magnitude > knee
    if over.any():
        room = ceiling - knee
        audio[over] = np.sign(audio[over]) * (knee + room * np.tanh((magnitude[over] - knee) / room))
    return audio


def fade_gains(tail: np.ndarray, head: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The gains of a crossfade from `tail` (the end of the piece so far) into `head` (the start of
    the next clip) that keep the level steady: equal power for unrelated sound (cos and sin), equal
    gain for the same sound in phase (where equal power would swell by 3 dB), and between them by the
    two parts' correlation. Sound in opposite phase (a negative correlation) fades at equal power."""
    energy = math.sqrt(float(tail @ tail) * float(head @ head))
    correlation = min(max(float(tail @ head) / energy, 0.0), 1.0) if energy > 0 else 0.0
    angle = np.linspace(0.0, math.pi / 2, tail.shape[0], dtype=np.float32)
    norm = np.sqrt(np.float32(1.0) + np.float32(correlation) * np.sin(2 * angle))
    return np.cos(angle) / norm, np.sin(angle) / norm


def crossfade_concat(
    clips: Sequence[np.ndarray], sample_rate: int = SAMPLE_RATE, fade_s: float = CROSSFADE_S
) -> np.ndarray:
    """Join clips with crossfades at a steady level (`fade_gains`); a fade never takes more than half
    of either clip.

    The output is allocated once and each clip faded in where it lands: growing it join by join
    copied the whole piece at every join (quadratic time, twice the piece's memory).
    """
    if not clips:
        return np.zeros(0, dtype=np.float32)
    sizes = [len(clip) for clip in clips]
    # Half of the clip before, not of the piece so far: a clip's fade in takes at most its first half,
    # so its fade out (at most its second half) never reaches into it, and a clip shorter than two
    # fades is still heard whole, at its own level, between two long ones.
    fades = [min(round(fade_s * sample_rate), before // 2, after // 2) for before, after in pairwise(sizes)]
    length = sizes[0] + sum(size - fade for size, fade in zip(sizes[1:], fades, strict=True))
    out = np.empty(length, dtype=np.float32)
    end = sizes[0]
    out[:end] = clips[0]
    for clip, fade in zip(clips[1:], fades, strict=True):
        part = np.asarray(clip, dtype=np.float32)
        if fade:
            fade_out, fade_in = fade_gains(out[end - fade : end], part[:fade])
            out[end - fade : end] = out[end - fade : end] * fade_out + part[:fade] * fade_in
        out[end : end + part.shape[0] - fade] = part[fade:]
        end += part.shape[0] - fade
    return out


def curate(
    clips: Sequence[Clip],
    *,
    codes: Sequence[np.ndarray] | None = None,
    fade_s: float = CROSSFADE_S,
    progress: Progress | None = None,
) -> CurationResult:
    """Trim, score, order and join `clips`. With `codes` (one code sequence per clip, for samples
    made here) the similarity comes from them; otherwise from Chromaprint fingerprints."""
    if len(clips) < MIN_CLIPS:
        raise CurationError(f"Curating needs at least {MIN_CLIPS} clips; got {len(clips)}.")
    if not (isinstance(fade_s, int | float) and math.isfinite(fade_s) and fade_s >= 0):
        raise ValueError(f"fade_s must be a finite number of seconds, 0 or more, got {fade_s!r}")
    if codes is not None and len(codes) != len(clips):
        raise ValueError(f"{len(codes)} code sequences for {len(clips)} clips")
    trimmed = [trim_silence(clip.audio, keep_s=TRIM_MARGIN_S) for clip in clips]
    silent = [clip.name for clip, audio in zip(clips, trimmed, strict=True) if audio.size == 0]
    if len(silent) == len(clips):
        raise CurationError("Every clip is silent: there is nothing to curate.")
    kept = [i for i, audio in enumerate(trimmed) if audio.size]
    if len(kept) < MIN_CLIPS:
        raise CurationError(
            f"Only one clip has sound ({clips[kept[0]].name}); the others are silent: {', '.join(silent)}."
        )
    if codes is not None:
        features = [np.asarray(codes[i]) for i in kept]
        score: Callable[[np.ndarray, np.ndarray], float] = code_similarity
    else:
        features = []
        for done, i in enumerate(kept, start=1):
            features.append(fingerprint(looped(trimmed[i], MIN_FINGERPRINT_SECONDS)))
            if progress is not None:
                progress("fingerprinting", done, len(kept))
        score = fingerprint_similarity
    local = similarity_matrix(features, score, progress)
    path = order_by_similarity(local)
    n = len(clips)
    matrix = np.full((n, n), np.nan)
    matrix[np.ix_(kept, kept)] = local
    order = [kept[k] for k in path]
    joins = [float(local[path[k], path[k + 1]]) for k in range(len(path) - 1)]
    audio = crossfade_concat([even_loudness(trimmed[i]) for i in order], fade_s=fade_s)
    return CurationResult(order=order, join_scores=joins, audio=audio, similarity=matrix)
