"""`jukebot curate` on real files in a folder: the chosen order, join scores, a playable piece."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from jukebot.cli import main
from sampler.audio import decode_audio, encode_audio, wav_bytes
from sampler.curation import TRIM_MARGIN_S, trim_silence
from sampler.pictures import (
    STRIP_COLUMNS,
    STRIP_TILE_HEIGHT,
    STRIP_TILE_WIDTH,
    render_sample_picture,
    strip_tile_origin,
)
from tests.sampler.test_curation import MELODY_A, MELODY_B, melody


def test_curate_a_folder_into_one_piece(tmp_path: Path) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    (clips / "1-a.wav").write_bytes(wav_bytes(melody(MELODY_A, 4.0, seed=1)))
    (clips / "2-b.ogg").write_bytes(encode_audio(melody(MELODY_B, 4.0, seed=2), 44100, "ogg", 96_000))
    (clips / "3-a.mp3").write_bytes(encode_audio(melody(MELODY_A, 4.0, seed=3), 44100, "mp3", 128_000))
    (clips / "notes.txt").write_text("not audio, and not picked up from a folder")
    extra = tmp_path / "4-b.wav"
    extra.write_bytes(wav_bytes(melody(MELODY_B, 4.0, seed=4)))
    out = tmp_path / "piece.ogg"
    result = CliRunner().invoke(main, ["curate", str(clips), str(extra), "-o", str(out)])
    assert result.exit_code == 0, result.output
    lines = [
        line.split(". ", 1)[1]
        for line in result.output.splitlines()
        if ". " in line and line[:4].strip().isdigit()
    ]
    names = [line.split()[0] for line in lines]
    assert sorted(names) == ["1-a.wav", "2-b.ogg", "3-a.mp3", "4-b.wav"]
    groups = {frozenset(names[:2]), frozenset(names[2:])}
    assert groups == {frozenset({"1-a.wav", "3-a.mp3"}), frozenset({"2-b.ogg", "4-b.wav"})}
    assert len(lines[1].split()) == 2 and float(lines[1].split()[1]) > 0.85  # a join score is printed
    piece = decode_audio(out.read_bytes(), max_seconds=None)
    assert piece.shape[0] / 44100 == pytest.approx(4 * 4.0 - 3 * 0.5, abs=0.1)
    assert "Wrote" in result.output


def test_curate_says_what_is_wrong(tmp_path: Path) -> None:
    one = tmp_path / "one.wav"
    one.write_bytes(wav_bytes(melody(MELODY_A, 2.0)))
    runner = CliRunner()
    result = runner.invoke(main, ["curate", str(one), "-o", str(tmp_path / "x.ogg")])
    assert result.exit_code == 1 and "at least 2 clips; got 1" in result.output
    text = tmp_path / "text.wav"
    text.write_text("hello")
    result = runner.invoke(main, ["curate", str(one), str(text), "-o", str(tmp_path / "x.ogg")])
    assert result.exit_code == 1 and "text.wav:" in result.output
    result = runner.invoke(main, ["curate", str(one), str(one), "-o", str(tmp_path / "x.flac")])
    assert result.exit_code == 2 and "not '.flac'" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(main, ["curate", str(empty), "-o", str(tmp_path / "x.ogg")])
    assert result.exit_code == 2 and "holds no audio files" in result.output


def test_curate_draws_its_order_as_a_strip(tmp_path: Path) -> None:
    clips = {
        "a1.wav": wav_bytes(melody(MELODY_A, 3.0, seed=1)),
        "b1.ogg": encode_audio(melody(MELODY_B, 2.0, seed=2), 44100, "ogg", 96_000),
        "a2.wav": wav_bytes(np.concatenate([np.zeros(44100, np.float32), melody(MELODY_A, 2.0, seed=3)])),
    }
    for name, data in clips.items():
        (tmp_path / name).write_bytes(data)
    strip_path = tmp_path / "strip.png"
    args = ["curate", *(str(tmp_path / name) for name in clips), "-o", str(tmp_path / "piece.wav")]
    result = CliRunner().invoke(main, [*args, "--picture", str(strip_path)])
    assert result.exit_code == 0, result.output
    order = [
        line.split(". ", 1)[1].split()[0]
        for line in result.output.splitlines()
        if ". " in line and line[:4].strip().isdigit()
    ]
    assert sorted(order) == sorted(clips) and f"Drew the order in {strip_path}" in result.output
    strip = np.asarray(Image.open(strip_path).convert("RGB"))
    columns = min(STRIP_COLUMNS, len(order))
    for index, name in enumerate(order):
        # each tile is the clip as it goes into the piece: decoded, its silence trimmed (a2's first second)
        trimmed = trim_silence(
            decode_audio((tmp_path / name).read_bytes(), max_seconds=None), keep_s=TRIM_MARGIN_S
        )
        tile = render_sample_picture(trimmed, 44100, width=STRIP_TILE_WIDTH, height=STRIP_TILE_HEIGHT)
        x, y = strip_tile_origin(index, STRIP_TILE_WIDTH, STRIP_TILE_HEIGHT, columns)
        drawn = strip[y : y + STRIP_TILE_HEIGHT, x : x + STRIP_TILE_WIDTH]
        assert np.array_equal(drawn, np.asarray(Image.open(io.BytesIO(tile)).convert("RGB"))), name
    assert strip.shape[1] == strip_tile_origin(columns, STRIP_TILE_WIDTH, STRIP_TILE_HEIGHT, columns + 1)[0]

    refused = CliRunner().invoke(main, [*args, "--picture", str(tmp_path / "strip.jpg")])
    assert refused.exit_code == 2 and "name it .png" in refused.output
