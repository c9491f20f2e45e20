"""Pictures of the sound: every picture decoded with Pillow and read back pixel by pixel."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image

from sampler.pictures import (
    FRAME_SECONDS,
    MAX_HZ,
    MIN_HZ,
    PICTURE_HEIGHT,
    PICTURE_WIDTH,
    layout,
    render_sample_picture,
    render_strip,
    strip_tile_origin,
)

RATE = 32_000


def tone(seconds: float, hz: float = 1000.0, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(round(seconds * RATE)) / RATE
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def noise(seconds: float, amplitude: float = 0.2, seed: int = 0) -> np.ndarray:
    return (amplitude * np.random.default_rng(seed).standard_normal(round(seconds * RATE))).astype(np.float32)


def pixels(png: bytes) -> np.ndarray:
    """(height, width, 3) uint8: the PNG as anyone would see it."""
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB"))


def brightness(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float64).mean(axis=-1)


def test_a_tone_is_a_line_at_its_pitch_and_noise_fills_the_spectrum() -> None:
    box = layout()
    top, bottom = box.spectrogram
    rows = bottom - top
    tone_png = render_sample_picture(tone(5.0, 1000.0), RATE)
    noise_png = render_sample_picture(noise(5.0), RATE)
    for png in (tone_png, noise_png):
        picture = pixels(png)
        assert picture.shape == (PICTURE_HEIGHT, PICTURE_WIDTH, 3)
        assert brightness(picture).var() > 100  # not blank

    tone_rows = brightness(pixels(tone_png)[top:bottom]).mean(axis=1)  # top row: highest pitch
    expected = rows - 1 - math.log(1000 / MIN_HZ) / math.log(MAX_HZ / MIN_HZ) * rows
    assert abs(int(np.argmax(tone_rows)) - expected) <= 2
    lit = tone_rows > tone_rows.min() + 0.5 * (tone_rows.max() - tone_rows.min())
    assert lit.sum() <= 6  # a line, not a wash

    noise_rows = brightness(pixels(noise_png)[top:bottom]).mean(axis=1)
    assert (noise_rows > tone_rows.min() + 40).mean() > 0.9  # white noise lights every pitch
    assert not np.array_equal(pixels(tone_png)[top:bottom], pixels(noise_png)[top:bottom])


@pytest.mark.parametrize("seconds", [2.0, 60.0])
def test_where_the_sound_stops_the_picture_goes_dark(seconds: float) -> None:
    """Time spans the clip's whole length: sound in the first half only lights the left half only."""
    half_sound = noise(seconds)
    half_sound[half_sound.shape[0] // 2 :] = 0.0
    silence = np.zeros_like(half_sound)
    sound = pixels(render_sample_picture(half_sound, RATE))
    quiet = pixels(render_sample_picture(silence, RATE))
    box = layout()
    drawn = slice(0, box.envelope[1])  # spectrogram and envelope; the axis differs by its labels alone
    middle = PICTURE_WIDTH // 2
    margin = math.ceil(FRAME_SECONDS / 2 / seconds * PICTURE_WIDTH) + 1  # FFT frames straddling the stop
    assert np.array_equal(sound[drawn, middle + margin :], quiet[drawn, middle + margin :])
    left = brightness(sound[drawn, : middle - margin])
    assert left.mean() > brightness(quiet[drawn, : middle - margin]).mean() + 40
    # every column with sound shows it in the envelope
    envelope = brightness(sound[box.envelope[0] : box.envelope[1], : middle - margin])
    silent_envelope = brightness(quiet[box.envelope[0] : box.envelope[1], : middle - margin])
    assert (envelope.max(axis=0) > silent_envelope.max(axis=0) + 50).all()


@pytest.mark.parametrize(("seconds", "prime"), [(6.0, 3.0), (20.0, 5.0), (8.0, 7.5)])
def test_the_prime_marker_covers_its_share_of_the_width(seconds: float, prime: float) -> None:
    audio = noise(seconds, amplitude=0.05) + tone(seconds, 440.0, 0.2)
    plain = pixels(render_sample_picture(audio, RATE))
    marked = pixels(render_sample_picture(audio, RATE, prime_seconds=prime))
    drawn = slice(0, layout().envelope[1])
    changed = np.flatnonzero((plain[drawn] != marked[drawn]).any(axis=(0, 2)))
    edge = prime / seconds * PICTURE_WIDTH
    # every column from the start to the edge is tinted (and the edge line drawn); none after
    assert changed[0] == 0 and np.array_equal(changed, np.arange(changed.size))
    assert abs(changed.size - edge) <= 2
    # whole columns are tinted, not a few pixels: the marker is a band
    assert ((plain[drawn, : changed.size - 1] != marked[drawn, : changed.size - 1]).any(axis=2)).mean() > 0.9


def test_a_prime_as_long_as_the_clip_tints_all_of_it() -> None:
    audio = tone(4.0)
    plain = pixels(render_sample_picture(audio, RATE))
    marked = pixels(render_sample_picture(audio, RATE, prime_seconds=10.0))
    drawn = slice(0, layout().envelope[1])
    assert (plain[drawn] != marked[drawn]).any(axis=(0, 2)).all()


@pytest.mark.parametrize(("width", "height"), [(320, 96), (200, 40), (1000, 300)])
def test_any_reasonable_size(width: int, height: int) -> None:
    picture = pixels(render_sample_picture(noise(3.0), RATE, width=width, height=height, prime_seconds=1.0))
    assert picture.shape == (height, width, 3) and brightness(picture).var() > 100


def test_bad_input_says_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="mono audio"):
        render_sample_picture(np.zeros((2, 100), np.float32), RATE)
    with pytest.raises(ValueError, match="at least 32×32 pixels"):
        render_sample_picture(tone(1.0), RATE, width=10)
    with pytest.raises(ValueError, match="sample rate must be positive"):
        render_sample_picture(tone(1.0), 0)
    with pytest.raises(ValueError, match="one score per join"):
        render_strip([render_sample_picture(tone(1.0), RATE)] * 2, ["a", "b"], [])
    with pytest.raises(ValueError, match="at least one picture"):
        render_strip([], [], [])


def test_empty_and_tiny_clips_still_draw() -> None:
    assert pixels(render_sample_picture(np.zeros(0, np.float32), RATE)).shape == (
        PICTURE_HEIGHT,
        PICTURE_WIDTH,
        3,
    )
    tiny = pixels(render_sample_picture(tone(0.005), RATE))  # fewer samples than columns
    assert tiny.shape == (PICTURE_HEIGHT, PICTURE_WIDTH, 3)


def test_a_strip_shows_each_picture_in_order_with_captions() -> None:
    clips = [tone(2.0, 220.0), noise(3.0), tone(1.0, 3000.0), noise(2.0, 0.02, seed=1), tone(2.0, 60.0)]
    tiles = [render_sample_picture(clip, RATE, width=200, height=80) for clip in clips]
    strip = pixels(
        render_strip(tiles, ["low", "noise", "high", "quiet", "bass"], [0.9, 0.8, 0.7, 0.6], columns=3)
    )
    first_x, first_y = strip_tile_origin(0, 200, 80, 3)
    _, last_y = strip_tile_origin(4, 200, 80, 3)
    assert strip.shape[1] == 2 * first_x + 3 * 200 + 2 * (strip_tile_origin(1, 200, 80, 3)[0] - first_x - 200)
    assert strip.shape[0] > last_y + 80  # two rows, captions under the second
    for index, tile in enumerate(tiles):
        x, y = strip_tile_origin(index, 200, 80, 3)
        assert np.array_equal(strip[y : y + 80, x : x + 200], pixels(tile)), f"tile {index} out of place"
        caption = brightness(strip[y + 80 : y + 80 + 26, x : x + 200])
        assert caption.max() > 150  # text is written under every tile
    # the first tile has a name but no join; the others a second line with the score
    first_caption = brightness(strip[first_y + 80 + 14 : first_y + 80 + 26, first_x : first_x + 200])
    second_x, second_y = strip_tile_origin(1, 200, 80, 3)
    second_caption = brightness(strip[second_y + 80 + 14 : second_y + 80 + 26, second_x : second_x + 200])
    assert second_caption.max() > first_caption.max() + 50


def test_a_strip_caption_is_one_line_whatever_the_file_name_holds() -> None:
    # A file name may hold a newline (Pillow refused to measure it), other control characters or
    # bytes that are not UTF-8 (surrogates); each is drawn as one replacement character.
    tile = render_sample_picture(tone(1.0), RATE, width=200, height=80)
    names = ["odd\nname.wav", "cr\rlf\r\n.wav", "esc\x1b[31m.wav", "bad\udcff.wav", "para\u2029.wav"]
    strip = pixels(render_strip([tile] * len(names), names, [0.5] * (len(names) - 1), columns=5))
    plain = pixels(render_strip([tile] * len(names), ["n"] * len(names), [0.5] * (len(names) - 1), columns=5))
    assert strip.shape == plain.shape
    x, y = strip_tile_origin(0, 200, 80, 5)
    first_line, second_line = slice(y + 80, y + 80 + 14), slice(y + 80 + 14, y + 80 + 26)
    assert strip[first_line, x : x + 200].max() > 150  # the name is written...
    assert np.array_equal(strip[second_line, x : x + 200], plain[second_line, x : x + 200])  # ...on one line
