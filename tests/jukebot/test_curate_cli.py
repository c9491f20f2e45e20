"""`jukebot curate` on real files in a folder: the chosen order, join scores, a playable piece."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import soundfile
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
    for fade in ("nan", "-1", "11"):  # NaN passed click's range check and crashed after all the work
        result = runner.invoke(
            main, ["curate", str(one), str(one), "-o", str(tmp_path / "x.ogg"), "--fade", fade]
        )
        assert result.exit_code == 2 and "Invalid value for '--fade'" in result.output, result.output
        assert "Traceback" not in result.output


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


def _two_clips(folder: Path) -> list[str]:
    (folder / "a.wav").write_bytes(wav_bytes(melody(MELODY_A, 2.0, seed=1)))
    (folder / "b.wav").write_bytes(wav_bytes(melody(MELODY_B, 2.0, seed=2)))
    return [str(folder / "a.wav"), str(folder / "b.wav")]


def test_curate_refuses_an_output_it_cannot_or_must_not_write(tmp_path: Path) -> None:
    clips = _two_clips(tmp_path)
    before = (tmp_path / "a.wav").read_bytes()
    runner = CliRunner()
    missing = tmp_path / "no" / "such" / "piece.ogg"
    result = runner.invoke(main, ["curate", *clips, "-o", str(missing)])
    assert result.exit_code == 2 and f"the folder {missing.parent} does not exist" in result.output
    result = runner.invoke(
        main, ["curate", *clips, "-o", str(tmp_path / "p.wav"), "--picture", str(missing.with_suffix(".png"))]
    )
    assert result.exit_code == 2 and "--picture" in result.output and not (tmp_path / "p.wav").exists()
    # An input under another spelling, or the folder it is in, is still that input.
    for same in (str(tmp_path / "a.wav"), str(tmp_path / "sub" / ".." / "a.wav")):
        (tmp_path / "sub").mkdir(exist_ok=True)
        result = runner.invoke(main, ["curate", str(tmp_path), "-o", same])
        assert result.exit_code == 2 and "is one of the clips to join" in result.output, result.output
    assert (tmp_path / "a.wav").read_bytes() == before


def test_curate_replaces_the_output_in_one_step(tmp_path: Path) -> None:
    clips = _two_clips(tmp_path)
    out = tmp_path / "out" / "piece.wav"
    out.parent.mkdir()
    out.write_bytes(b"the piece of an earlier run")
    earlier = tmp_path / "earlier.wav"
    earlier.hardlink_to(out)  # someone still reading the earlier piece (a player, a copy)
    result = CliRunner().invoke(main, ["curate", *clips, "-o", str(out)])
    assert result.exit_code == 0, result.output
    # The new piece was written beside it and renamed over it: the earlier file was never rewritten.
    assert earlier.read_bytes() == b"the piece of an earlier run"
    assert decode_audio(out.read_bytes(), max_seconds=None).shape[0] > 44100
    assert sorted(p.name for p in out.parent.iterdir()) == ["piece.wav"]  # no temporary file left


def test_a_failed_write_keeps_the_earlier_piece(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clips = _two_clips(tmp_path)
    out = tmp_path / "out" / "piece.ogg"
    out.parent.mkdir()
    out.write_bytes(b"the piece of an earlier run")

    def disk_full(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", disk_full)
    result = CliRunner().invoke(main, ["curate", *clips, "-o", str(out)])
    assert result.exit_code == 1 and f"Could not write {out}: No space left on device" in result.output
    assert out.read_bytes() == b"the piece of an earlier run"
    assert sorted(p.name for p in out.parent.iterdir()) == ["piece.ogg"]


def test_curate_draws_names_with_a_newline_and_refuses_nan(tmp_path: Path) -> None:
    odd = tmp_path / "odd\nname.wav"
    odd.write_bytes(wav_bytes(melody(MELODY_A, 2.0, seed=1)))
    plain = tmp_path / "plain.wav"
    plain.write_bytes(wav_bytes(melody(MELODY_B, 2.0, seed=2)))
    strip = tmp_path / "strip.png"
    args = ["curate", str(odd), str(plain), "-o", str(tmp_path / "piece.ogg"), "--picture", str(strip)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert Image.open(strip).format == "PNG"
    # One NaN sample came out as a silent clip reported as joined; the file is damaged: say so.
    damaged = melody(MELODY_A, 2.0, seed=3)
    damaged[1000] = np.nan
    nan = tmp_path / "nan.wav"
    buffer = io.BytesIO()
    soundfile.write(buffer, damaged, 44100, format="WAV", subtype="FLOAT")
    nan.write_bytes(buffer.getvalue())
    result = CliRunner().invoke(main, ["curate", str(nan), str(plain), "-o", str(tmp_path / "nan.ogg")])
    assert result.exit_code == 1 and f"{nan}: The file holds invalid samples" in result.output
    assert not (tmp_path / "nan.ogg").exists()
