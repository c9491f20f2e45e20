"""`jukebot curate` on what a musician's folder holds: short loops, an empty export."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from click.testing import CliRunner

from jukebot.cli import main
from sampler.audio import SAMPLE_RATE, decode_audio, wav_bytes
from tests.sampler.test_curation import MELODY_A, MELODY_B, melody

pytest.importorskip("chromaprint")


def _order(output: str) -> list[tuple[str, float | None]]:
    rows = []
    for line in output.splitlines():
        head, _, rest = line.strip().partition(". ")
        if head.isdigit() and rest:
            name, *score = rest.split()
            rows.append((name, float(score[0]) if score else None))
    return rows


def test_a_folder_of_two_second_loops_is_ordered_by_sound(tmp_path: Path) -> None:
    clips = tmp_path / "loops"
    clips.mkdir()
    for name, notes, seed in (
        ("1-a", MELODY_A, 1),
        ("2-b", MELODY_B, 2),
        ("3-a", MELODY_A, 3),
        ("4-b", MELODY_B, 4),
    ):
        (clips / f"{name}.wav").write_bytes(wav_bytes(melody(notes, 2.0, seed=seed)))
    out = tmp_path / "piece.wav"
    result = CliRunner().invoke(main, ["curate", str(clips), "-o", str(out)])
    assert result.exit_code == 0, result.output
    rows = _order(result.output)
    names = [name for name, _ in rows]
    assert {frozenset(names[:2]), frozenset(names[2:])} == {
        frozenset({"1-a.wav", "3-a.wav"}),
        frozenset({"2-b.wav", "4-b.wav"}),
    }, result.output
    scores = [score for _, score in rows[1:]]
    assert scores[0] is not None and scores[0] > 0.9 and scores[2] is not None and scores[2] > 0.9
    assert scores[1] is not None and scores[1] < scores[0]
    assert decode_audio(out.read_bytes(), max_seconds=None).shape[0] / SAMPLE_RATE == pytest.approx(
        4 * 2.0 - 3 * 0.5, abs=0.01
    )


def test_an_empty_file_in_the_folder_is_left_out_like_a_silent_one(tmp_path: Path) -> None:
    clips = tmp_path / "stems"
    clips.mkdir()
    (clips / "a.wav").write_bytes(wav_bytes(melody(MELODY_A, 5.0, seed=1)))
    (clips / "b.wav").write_bytes(wav_bytes(melody(MELODY_B, 5.0, seed=2)))
    soundfile.write(clips / "c-empty.wav", np.zeros(0, np.float32), SAMPLE_RATE)
    soundfile.write(clips / "d-silent.wav", np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE)
    out, strip = tmp_path / "piece.ogg", tmp_path / "strip.png"
    result = CliRunner().invoke(main, ["curate", str(clips), "-o", str(out), "--picture", str(strip)])
    assert result.exit_code == 0, result.output
    assert sorted(name for name, _ in _order(result.output)) == ["a.wav", "b.wav"]
    assert "Left out (no sound: silent or empty): c-empty.wav, d-silent.wav" in result.output
    assert out.stat().st_size > 0 and strip.stat().st_size > 0


def test_a_folder_copied_from_a_mac_skips_its_hidden_metadata_files(tmp_path: Path) -> None:
    clips = tmp_path / "from-a-stick"
    clips.mkdir()
    for name, notes, seed in (("a", MELODY_A, 1), ("b", MELODY_B, 2)):
        (clips / f"{name}.wav").write_bytes(wav_bytes(melody(notes, 5.0, seed=seed)))
        # AppleDouble: what macOS writes beside each file on a FAT or exFAT drive
        (clips / f"._{name}.wav").write_bytes(
            b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(4000)
        )
    out = tmp_path / "piece.ogg"
    result = CliRunner().invoke(main, ["curate", str(clips), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(name for name, _ in _order(result.output)) == ["a.wav", "b.wav"]
    # a hidden file named on the command line is still taken as given
    result = CliRunner().invoke(
        main, ["curate", str(clips / "a.wav"), str(clips / "._b.wav"), "-o", str(out)]
    )
    assert result.exit_code == 1 and "._b.wav:" in result.output


def test_takes_of_the_same_name_in_different_folders_are_told_apart(tmp_path: Path) -> None:
    """Each folder holds a `clip.wav`: the order printed `1. clip.wav … 3. clip.wav`, which could not
    say which take went where."""
    inputs = []
    for folder, notes, seed in (("take1", MELODY_A, 1), ("take2", MELODY_B, 2)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "clip.wav").write_bytes(wav_bytes(melody(notes, 3.0, seed=seed)))
        inputs.append(str(tmp_path / folder))
    (tmp_path / "take2" / "other.wav").write_bytes(wav_bytes(melody(MELODY_A, 3.0, seed=3)))
    result = CliRunner().invoke(main, ["curate", *inputs, "-o", str(tmp_path / "piece.ogg")])
    assert result.exit_code == 0, result.output
    assert sorted(name for name, _ in _order(result.output)) == [
        str(tmp_path / "take1" / "clip.wav"),
        str(tmp_path / "take2" / "clip.wav"),
        "other.wav",  # a name no other clip has stays short
    ]


def test_a_long_output_name_that_fits_is_written(tmp_path: Path) -> None:
    """A 254-byte name is a valid file name, but its temporary name (about 25 bytes more) was not:
    the piece was refused with "no file can be created in the folder … (File name too long)"."""
    for name, notes, seed in (("a", MELODY_A, 1), ("b", MELODY_B, 2)):
        (tmp_path / f"{name}.wav").write_bytes(wav_bytes(melody(notes, 3.0, seed=seed)))
    out = tmp_path / ("p" * 250 + ".ogg")
    result = CliRunner().invoke(
        main, ["curate", str(tmp_path / "a.wav"), str(tmp_path / "b.wav"), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.wav", "b.wav", out.name]


# The CLI in a process of its own, told to stop (SIGTERM, as `timeout` or systemd do) while its
# temporary file is written: the fsync before the rename sends the signal.
STOPPED_MID_WRITE = """
import os, signal, sys
def stopped(fd):
    os.kill(os.getpid(), signal.SIGTERM)
os.fsync = stopped
from jukebot.cli import main
main(sys.argv[1:], prog_name="jukebot")
"""


def test_a_stop_signal_mid_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    """SIGTERM killed the process without unwinding: a hidden `.piece.ogg.….part` stayed behind."""
    for name, notes, seed in (("a", MELODY_A, 1), ("b", MELODY_B, 2)):
        (tmp_path / f"{name}.wav").write_bytes(wav_bytes(melody(notes, 3.0, seed=seed)))
    out = tmp_path / "piece.ogg"
    args = ["curate", str(tmp_path / "a.wav"), str(tmp_path / "b.wav"), "-o", str(out)]
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    done = subprocess.run(
        [sys.executable, "-c", STOPPED_MID_WRITE, *args], env=env, capture_output=True, timeout=300
    )
    assert done.returncode == 128 + signal.SIGTERM, done.stderr.decode()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.wav", "b.wav"]  # nothing written
