"""Pictures of the sound: a small PNG per clip, so people can choose by looking.

A picture is a log-frequency spectrogram (40 Hz–16 kHz, dB colour map) over the waveform's
loudness envelope (peak and RMS per column, mirrored, on a dB scale), over a time axis. The part
of a clip that came from a prime (the clip the model continued) is tinted, with a line where the
model's own part starts. `render_strip` lays such pictures out in order with a caption under each
(its place, its name, and the similarity of the join with the one before), for curation.

Time runs left to right over the clip's whole length: column c covers [c, c + 1) / width of it.
Fast on a CPU: a strided STFT with a few frames per column (never more frames than the picture
shows), frequency rows by a cached weight matrix, and a palette image (small PNGs).
Torch-free and Discord-free: the bot renders in a thread, `jukebot curate` and `/curate` render strips
(`strip_picture`).
"""

from __future__ import annotations

import functools
import io
import math
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageDraw, ImageFont

from sampler.audio import SAMPLE_RATE
from sampler.curation import TRIM_MARGIN_S, Clip, trim_silence

PICTURE_WIDTH = 640
PICTURE_HEIGHT = 160
STRIP_TILE_WIDTH = 320
STRIP_TILE_HEIGHT = 96
STRIP_COLUMNS = 4
MIN_WIDTH = 32
MIN_HEIGHT = 32
MIN_HZ = 40.0
MAX_HZ = 16_000.0
# Spectrogram colours span these levels (dB relative to a full-scale sine in one bin).
DB_FLOOR = -90.0
DB_CEILING = -10.0
ENVELOPE_FLOOR_DB = -60.0  # the envelope is empty below this (dBFS)
FRAME_SECONDS = 0.04  # FFT length: enough for 40 Hz rows, short enough for rhythm
MAX_FRAMES_PER_COLUMN = 3
AXIS_HEIGHT = 12  # the time axis under the envelope; left out of pictures under AXIS_MIN_HEIGHT
AXIS_MIN_HEIGHT = 80
ENVELOPE_SHARE = 0.28
FONT_SIZE = 10
CAPTION_HEIGHT = 28
STRIP_GAP = 8

# Palette: LEVELS colour-map entries, the same tinted for the prime's part, then named colours.
LEVELS = 100
_INFERNO = [
    (0, 0, 4),
    (40, 11, 84),
    (101, 21, 110),
    (159, 42, 99),
    (212, 72, 66),
    (245, 125, 21),
    (250, 193, 39),
    (252, 255, 164),
]
PRIME_TINT = (40, 200, 220)
PRIME_TINT_SHARE = 0.3
BACKGROUND, ENVELOPE_PEAK, ENVELOPE_RMS = 2 * LEVELS, 2 * LEVELS + 1, 2 * LEVELS + 2
PRIME_BACKGROUND, PRIME_ENVELOPE_PEAK, PRIME_ENVELOPE_RMS = 2 * LEVELS + 3, 2 * LEVELS + 4, 2 * LEVELS + 5
PRIME_LINE, AXIS_TICK, AXIS_TEXT, LABEL_TEXT = 2 * LEVELS + 6, 2 * LEVELS + 7, 2 * LEVELS + 8, 2 * LEVELS + 9
_NAMED = {
    BACKGROUND: (18, 18, 24),
    ENVELOPE_PEAK: (110, 110, 135),
    ENVELOPE_RMS: (225, 225, 240),
    PRIME_LINE: (80, 230, 255),
    AXIS_TICK: (90, 90, 105),
    AXIS_TEXT: (170, 170, 185),
    LABEL_TEXT: (255, 255, 255),
}


def _tinted(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    r, g, b = (
        round(c * (1 - PRIME_TINT_SHARE) + t * PRIME_TINT_SHARE) for c, t in zip(rgb, PRIME_TINT, strict=True)
    )
    return r, g, b


def _palette() -> list[int]:
    anchors = np.array(_INFERNO, dtype=np.float64)
    positions = np.linspace(0, 1, len(_INFERNO))
    at = np.linspace(0, 1, LEVELS)
    colour_map = np.stack([np.interp(at, positions, anchors[:, c]) for c in range(3)], axis=1)
    entries: list[tuple[int, int, int]] = [(0, 0, 0)] * 256
    for index, (r, g, b) in enumerate(np.rint(colour_map).astype(int).tolist()):
        entries[index] = (r, g, b)
        entries[LEVELS + index] = _tinted((r, g, b))
    for index, rgb in _NAMED.items():
        entries[index] = rgb
    entries[PRIME_BACKGROUND] = _tinted(_NAMED[BACKGROUND])
    entries[PRIME_ENVELOPE_PEAK] = _tinted(_NAMED[ENVELOPE_PEAK])
    entries[PRIME_ENVELOPE_RMS] = _tinted(_NAMED[ENVELOPE_RMS])
    return [channel for rgb in entries for channel in rgb]


PALETTE = _palette()


def _tint_lookup() -> np.ndarray:
    lookup = np.arange(256, dtype=np.uint8)
    lookup[:LEVELS] += LEVELS
    lookup[BACKGROUND] = PRIME_BACKGROUND
    lookup[ENVELOPE_PEAK] = PRIME_ENVELOPE_PEAK
    lookup[ENVELOPE_RMS] = PRIME_ENVELOPE_RMS
    return lookup


_TINT = _tint_lookup()


@dataclass(frozen=True, slots=True)
class Layout:
    """Rows of each band of a picture: [top, bottom) in pixels, the spectrogram's high notes on top."""

    width: int
    height: int
    spectrogram: tuple[int, int]
    envelope: tuple[int, int]
    axis: tuple[int, int]


def layout(width: int = PICTURE_WIDTH, height: int = PICTURE_HEIGHT) -> Layout:
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        raise ValueError(f"a picture needs at least {MIN_WIDTH}×{MIN_HEIGHT} pixels, got {width}×{height}")
    axis = AXIS_HEIGHT if height >= AXIS_MIN_HEIGHT else 0
    rest = height - axis
    envelope = max(8, round(rest * ENVELOPE_SHARE))
    spectrogram = rest - envelope
    return Layout(width, height, (0, spectrogram), (spectrogram, rest), (rest, height))


@functools.cache
def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except (OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


@functools.lru_cache(maxsize=16)
def _row_weights(sample_rate: int, n_fft: int, rows: int) -> np.ndarray:
    """(rows, bins): each row the mean power of the FFT bins in its log-spaced band, or where a band
    is narrower than a bin, the two nearest bins interpolated at the band's centre. Row 0 lowest."""
    top = min(MAX_HZ, sample_rate / 2)
    edges = MIN_HZ * (top / MIN_HZ) ** (np.arange(rows + 1) / rows)
    bins = n_fft // 2 + 1
    bin_hz = sample_rate / n_fft
    weights = np.zeros((rows, bins), dtype=np.float32)
    for row in range(rows):
        first = math.ceil(edges[row] / bin_hz)
        last = min(math.ceil(edges[row + 1] / bin_hz), bins)  # exclusive
        if last > first:
            weights[row, first:last] = 1.0 / (last - first)
        else:
            position = min(math.sqrt(edges[row] * edges[row + 1]) / bin_hz, bins - 1.0)
            below = min(int(position), bins - 2)
            fraction = position - below
            weights[row, below] = 1.0 - fraction
            weights[row, below + 1] = fraction
    return weights


def _spectrogram_db(audio: np.ndarray, sample_rate: int, columns: int, rows: int) -> np.ndarray:
    """(rows, columns) power in dB, row 0 the lowest frequency."""
    n_fft = 1 << max(6, round(math.log2(sample_rate * FRAME_SECONDS)))
    n = audio.shape[0]
    frames_per_column = int(np.clip(math.ceil(n / columns / (n_fft / 2)), 1, MAX_FRAMES_PER_COLUMN))
    frames = columns * frames_per_column
    centres = (np.arange(frames) + 0.5) * (n / frames)
    padded = np.pad(audio, (n_fft, n_fft))  # frames past either end see silence
    starts = np.round(centres).astype(np.int64) + n_fft - n_fft // 2
    windowed = sliding_window_view(padded, n_fft)[starts] * np.hanning(n_fft).astype(np.float32)
    spectrum = np.fft.rfft(windowed, axis=1)
    # 0 dB: a full-scale sine's peak bin (a Hann window's coherent gain is 1/2)
    power = (spectrum.real**2 + spectrum.imag**2) / (n_fft / 4) ** 2
    power = power.reshape(columns, frames_per_column, -1).mean(axis=1)
    banded = power @ _row_weights(sample_rate, n_fft, rows).T  # (columns, rows)
    return (10.0 * np.log10(np.maximum(banded, 1e-20))).T


def _envelope_db(audio: np.ndarray, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Peak and RMS level (dBFS) of each column's samples."""
    n = audio.shape[0]
    bounds = np.round(np.arange(columns + 1) * (n / columns)).astype(np.int64)
    starts = np.minimum(bounds[:-1], n - 1)
    counts = np.maximum(bounds[1:] - bounds[:-1], 1)
    magnitude = np.abs(audio)
    peak = np.maximum.reduceat(magnitude, starts)
    rms = np.sqrt(np.add.reduceat(np.square(magnitude), starts) / counts)
    rms = np.where(bounds[1:] > bounds[:-1], rms, magnitude[starts])  # a column narrower than a sample

    def db(x: np.ndarray) -> np.ndarray:
        return 20.0 * np.log10(np.maximum(x, 1e-10))

    return db(peak), db(rms)


def _nice_step(seconds: float, most_ticks: int) -> float:
    for step in (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600):
        if seconds / step <= most_ticks:
            return float(step)
    return seconds / most_ticks


def _time_label(seconds: float) -> str:
    if seconds >= 60:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes}:{rest:02d}"
    return f"{seconds:g} s"


def _draw_axis(draw: ImageDraw.ImageDraw, box: Layout, duration: float) -> None:
    top, bottom = box.axis
    if bottom <= top:
        return
    font = _font()
    end = f"{duration:.1f} s" if duration < 60 else _time_label(duration)
    end_width = draw.textlength(end, font=font)
    draw.text((box.width - 2 - end_width, top), end, fill=AXIS_TEXT, font=font)
    if duration <= 0:
        return
    step = _nice_step(duration, max(1, box.width // 80))
    tick = step
    while tick < duration:
        x = round(tick / duration * box.width)
        draw.line([(x, top), (x, top + 2)], fill=AXIS_TICK)
        label = _time_label(tick)
        if x + 2 + draw.textlength(label, font=font) < box.width - end_width - 8:
            draw.text((x + 2, top), label, fill=AXIS_TEXT, font=font)
        tick += step


def render_sample_picture(
    audio: np.ndarray,
    sample_rate: int,
    *,
    prime_seconds: float | None = None,
    width: int = PICTURE_WIDTH,
    height: int = PICTURE_HEIGHT,
) -> bytes:
    """A PNG of mono `audio`: spectrogram, envelope and time axis, the first `prime_seconds` tinted."""
    samples = np.asarray(audio, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"a picture is drawn from mono audio (one dimension), got shape {samples.shape}")
    if sample_rate <= 0:
        raise ValueError(f"the sample rate must be positive, got {sample_rate}")
    box = layout(width, height)
    duration = samples.shape[0] / sample_rate
    pixels = np.full((height, width), BACKGROUND, dtype=np.uint8)
    spec_top, spec_bottom = box.spectrogram
    env_top, env_bottom = box.envelope
    if samples.shape[0]:
        samples = np.nan_to_num(samples, nan=0.0, posinf=0.0, neginf=0.0)
        db = _spectrogram_db(samples, sample_rate, width, spec_bottom - spec_top)
        scaled = np.clip((db - DB_FLOOR) / (DB_CEILING - DB_FLOOR), 0.0, 1.0) * (LEVELS - 1)
        pixels[spec_top:spec_bottom] = np.rint(scaled[::-1]).astype(np.uint8)
        peak_db, rms_db = _envelope_db(samples, width)
        middle = (env_top + env_bottom - 1) / 2
        half = (env_bottom - env_top) / 2
        offsets = np.abs(np.arange(env_top, env_bottom) - middle)[:, None]  # (rows, 1)

        def reach(level_db: np.ndarray) -> np.ndarray:
            share = np.clip((level_db - ENVELOPE_FLOOR_DB) / -ENVELOPE_FLOOR_DB, 0.0, 1.0)
            return np.where(share > 0, share * half, -1.0)[None, :]  # (1, columns); -1: nothing

        band = pixels[env_top:env_bottom]
        band[offsets <= reach(peak_db)] = ENVELOPE_PEAK
        band[offsets <= reach(rms_db)] = ENVELOPE_RMS
    else:
        pixels[spec_top:spec_bottom] = 0
    prime_edge = None
    if prime_seconds is not None and prime_seconds > 0 and duration > 0:
        prime_edge = min(width, round(prime_seconds / duration * width))
        pixels[:env_bottom, :prime_edge] = _TINT[pixels[:env_bottom, :prime_edge]]
        if prime_edge < width:
            pixels[:env_bottom, prime_edge] = PRIME_LINE
    image = Image.fromarray(pixels, mode="P")
    image.putpalette(PALETTE)
    draw = ImageDraw.Draw(image)
    draw.fontmode = "1"  # palette indices must not be blended by anti-aliasing
    _draw_axis(draw, box, duration)
    if prime_edge is not None and prime_edge >= 40 and spec_bottom - spec_top >= FONT_SIZE + 2:
        draw.text((3, spec_top + 1), "prime", fill=LABEL_TEXT, font=_font())
    return _png(image)


def _png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=6)
    return out.getvalue()


def _printable(text: str) -> str:
    """`text` on one line: control characters, line breaks and undecodable bytes (a file name may
    hold any) become U+FFFD. Pillow refuses to measure text with a newline."""
    return "".join(
        "\N{REPLACEMENT CHARACTER}" if unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") else ch
        for ch in text
    )


def _fit(draw: ImageDraw.ImageDraw, text: str, width: float) -> str:
    font = _font()
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def strip_tile_origin(index: int, tile_width: int, tile_height: int, columns: int) -> tuple[int, int]:
    """Top-left corner of the `index`-th tile in a strip: rows of `columns` tiles, each captioned."""
    row, column = divmod(index, columns)
    return (
        STRIP_GAP + column * (tile_width + STRIP_GAP),
        STRIP_GAP + row * (tile_height + CAPTION_HEIGHT + STRIP_GAP),
    )


def render_strip(
    pictures: Sequence[bytes],
    labels: Sequence[str],
    scores: Sequence[float],
    *,
    columns: int = STRIP_COLUMNS,
) -> bytes:
    """A PNG of `pictures` (PNG bytes) in order, in rows of `columns`, each captioned with its place
    and label, and from the second on with `scores[i - 1]`: the similarity of its join with the one before."""
    if not pictures:
        raise ValueError("a strip needs at least one picture")
    if len(labels) != len(pictures) or len(scores) != len(pictures) - 1:
        raise ValueError(
            f"{len(pictures)} pictures need as many labels and one score per join ({len(pictures) - 1}); "
            f"got {len(labels)} labels and {len(scores)} scores"
        )
    if columns < 1:
        raise ValueError(f"a strip needs at least one column, got {columns}")
    tiles = [Image.open(io.BytesIO(data)).convert("RGB") for data in pictures]
    tile_width = max(tile.width for tile in tiles)
    tile_height = max(tile.height for tile in tiles)
    across = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / across)
    strip = Image.new(
        "RGB",
        (
            STRIP_GAP + across * (tile_width + STRIP_GAP),
            STRIP_GAP + rows * (tile_height + CAPTION_HEIGHT + STRIP_GAP),
        ),
        _NAMED[BACKGROUND],
    )
    draw = ImageDraw.Draw(strip)
    font = _font()
    for index, (tile, label) in enumerate(zip(tiles, labels, strict=True)):
        x, y = strip_tile_origin(index, tile_width, tile_height, across)
        strip.paste(tile, (x, y))
        caption_top = y + tile_height + 2
        draw.text(
            (x, caption_top),
            _fit(draw, f"{index + 1}. {_printable(label)}", tile_width),
            fill=_NAMED[LABEL_TEXT],
            font=font,
        )
        if index:
            join = f"join with {index}: {scores[index - 1]:.3f}"
            draw.text((x, caption_top + FONT_SIZE + 3), join, fill=_NAMED[PRIME_LINE], font=font)
    return _png(strip)


def strip_picture(
    ordered: Iterable[Clip], join_scores: Sequence[float], sample_rate: int | None = None
) -> bytes:
    """The strip of the clips as they go into the piece (trimmed of silence), in order, their audio at
    `sample_rate` (default the clips' 44.1 kHz). Each clip is drawn as it comes: a generator that
    decodes one at a time holds one clip's audio, not the piece's."""
    rate = SAMPLE_RATE if sample_rate is None else sample_rate
    names, tiles = [], []
    for clip in ordered:
        names.append(clip.name)
        tiles.append(
            render_sample_picture(
                trim_silence(clip.audio, rate, keep_s=TRIM_MARGIN_S),
                rate,
                width=STRIP_TILE_WIDTH,
                height=STRIP_TILE_HEIGHT,
            )
        )
    return render_strip(tiles, names, join_scores)
