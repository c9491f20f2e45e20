"""`jukebot curate` says in one sentence when an input cannot be read or an output cannot be written,
before any clip is decoded.

As root, these tests run in a child process without the capabilities that let root read and write
anything (tests/unprivileged.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from jukebot.cli import main
from sampler.audio import wav_bytes
from tests.sampler.test_curation import MELODY_A, MELODY_B, melody
from tests.unprivileged import SetMode, set_mode, without_read_privileges

__all__ = ["set_mode"]


def clips(folder: Path) -> Path:
    folder.mkdir()
    (folder / "a.wav").write_bytes(wav_bytes(melody(MELODY_A, 2.0, seed=1)))
    (folder / "b.wav").write_bytes(wav_bytes(melody(MELODY_B, 2.0, seed=2)))
    return folder


def curate(*args: str | Path) -> Result:
    return CliRunner().invoke(main, ["curate", *map(str, args)])


def error(result: Result) -> str:
    """The one `Error:` line of a refused run (a usage error: exit status 2)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    return line


@without_read_privileges
def test_an_unreadable_file_in_a_folder_is_named(tmp_path: Path, set_mode: SetMode) -> None:
    folder = clips(tmp_path / "F")
    set_mode(folder / "b.wav", 0)
    out = tmp_path / "piece.wav"
    line = error(curate(folder, "-o", out))
    assert line == f"Error: {folder / 'b.wav'} cannot be read (permission denied): fix its permissions."
    assert not out.exists()


@without_read_privileges
def test_a_folder_that_can_be_listed_but_not_entered_is_named(tmp_path: Path, set_mode: SetMode) -> None:
    folder = clips(tmp_path / "F")
    set_mode(folder, 0o444)
    line = error(curate(folder, "-o", tmp_path / "piece.wav"))
    assert line == f"Error: The folder {folder} cannot be read (permission denied): fix its permissions."


@pytest.mark.parametrize("option", ["-o", "--picture"])
@without_read_privileges
def test_an_output_in_a_folder_that_cannot_be_written_is_refused_before_the_work(
    tmp_path: Path, set_mode: SetMode, option: str
) -> None:
    """The clip that is not audio would stop the work at once: the folder is refused before it."""
    folder = clips(tmp_path / "F")
    (folder / "c.wav").write_text("not audio: decoding would stop here")
    locked = tmp_path / "locked"
    locked.mkdir()
    set_mode(locked, 0o555)
    path = locked / ("piece.ogg" if option == "-o" else "strip.png")
    args = ["-o", path] if option == "-o" else ["-o", tmp_path / "piece.ogg", "--picture", path]
    line = error(curate(folder, *args))
    assert line == (
        f"Error: {option} {path}: the folder {locked} cannot be written: fix its permissions, "
        "or write elsewhere."
    )
    assert not (tmp_path / "piece.ogg").exists() and list(locked.iterdir()) == []
