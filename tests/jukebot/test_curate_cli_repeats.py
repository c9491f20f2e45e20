"""`jukebot curate` joins each file once: named twice, by a folder and by name, or through a link (the
output among the clips stays refused: tests/jukebot/test_curate_cli.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile
from click.testing import CliRunner, Result

from jukebot.cli import main
from sampler.audio import SAMPLE_RATE
from tests.sampler.test_curation import MELODY_A, MELODY_B, melody

pytest.importorskip("chromaprint")

SECONDS = 3.0
FADE_S = 0.5


def _clips(folder: Path) -> Path:
    folder.mkdir()
    soundfile.write(folder / "a.wav", melody(MELODY_A, SECONDS, seed=1), SAMPLE_RATE)
    soundfile.write(folder / "b.wav", melody(MELODY_B, SECONDS, seed=2), SAMPLE_RATE)
    return folder


def _curate(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["curate", *map(str, args)])


def _joined(result: Result) -> list[str]:
    """The names in the order the run printed."""
    assert result.exit_code == 0, result.output
    names = []
    for line in result.output.splitlines():
        head, _, rest = line.strip().partition(". ")
        if head.isdigit() and rest:
            names.append(rest.split()[0])
    return names


def _seconds(path: Path) -> float:
    audio, rate = soundfile.read(path, dtype="float32")
    assert rate == SAMPLE_RATE
    return float(np.asarray(audio).shape[0] / rate)


def _two_clips_seconds() -> float:
    return 2 * SECONDS - FADE_S  # each clip's 0.1 s trim margin fits in its ~0.2 s of lead-in and tail


@pytest.mark.parametrize("twice", ["by name", "by folder and name", "through a link", "through a hard link"])
def test_a_file_given_twice_is_joined_once(tmp_path: Path, twice: str) -> None:
    folder = _clips(tmp_path / "clips")
    a, b = folder / "a.wav", folder / "b.wav"
    if twice == "by name":
        inputs: list[Path] = [a, b, a, tmp_path / "clips" / ".." / "clips" / "a.wav"]
    elif twice == "by folder and name":
        inputs = [folder, a]
    elif twice == "through a link":
        link = tmp_path / "again.wav"
        link.symlink_to(a)
        inputs = [folder, link]
    else:
        hard = tmp_path / "again.wav"
        hard.hardlink_to(a)
        inputs = [hard, folder]
    out = tmp_path / "piece.wav"
    result = _curate(*inputs, "-o", out)
    names = _joined(result)
    assert len(names) == 2 and set(names) <= {"a.wav", "b.wav", "again.wav"}, result.output
    assert "b.wav" in names
    assert _seconds(out) == pytest.approx(_two_clips_seconds(), abs=0.25)
    assert "more than once" in result.output


def test_one_file_named_twice_is_one_clip(tmp_path: Path) -> None:
    folder = _clips(tmp_path / "clips")
    result = _curate(folder / "a.wav", folder / "a.wav", "-o", tmp_path / "piece.wav")
    assert result.exit_code == 1 and "at least 2 clips; got 1" in result.output, result.output
    assert "more than once" in result.output


def test_the_output_named_as_a_clip_is_still_refused(tmp_path: Path) -> None:
    folder = _clips(tmp_path / "clips")
    a = folder / "a.wav"
    before = a.read_bytes()
    for inputs in ([a, folder / "b.wav"], [folder, a]):
        result = _curate(*inputs, "-o", a)
        assert result.exit_code == 2 and f"-o {a} is one of the clips to join" in result.output, result.output
    assert a.read_bytes() == before
    out = folder / "piece.wav"
    assert _curate(folder, "-o", out).exit_code == 0
    result = _curate(folder, out, "-o", out)
    assert result.exit_code == 2 and "is one of the clips to join" in result.output, result.output
