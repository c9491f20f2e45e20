"""`jukebot curate` refuses, by name and before any work, what is not a regular audio file (a FIFO,
whose read would wait forever; a broken link; a link loop) and an output folder no file can be
created in, whatever its permissions say."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.jukebot.test_curate_cli_unreadable import clips, curate, error

pytestmark = pytest.mark.timeout(120)  # a FIFO read as a clip would wait for a writer forever


def test_a_fifo_named_as_a_clip_is_refused(tmp_path: Path) -> None:
    folder = clips(tmp_path / "F")
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    out = tmp_path / "piece.wav"
    line = error(curate(folder / "a.wav", fifo, "-o", out))
    assert line == (
        f"Error: {fifo} is a FIFO (named pipe), not an audio file: pass audio files, or folders of them."
    )
    assert not out.exists()


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _broken_link(path: Path) -> None:
    path.symlink_to("gone.wav")


def _link_loop(path: Path) -> None:
    path.symlink_to(path.name)


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (_fifo, "is a FIFO (named pipe), not an audio file: pass audio files, or folders of them."),
        (_broken_link, "is a broken link (to gone.wav): fix it, or remove it."),
        (_link_loop, "is a link that loops back on itself: fix it, or remove it."),
    ],
    ids=["fifo", "broken_link", "link_loop"],
)
def test_a_clip_in_a_folder_that_is_not_a_file_is_named(
    tmp_path: Path, make: Callable[[Path], None], says: str
) -> None:
    folder = clips(tmp_path / "F")
    make(folder / "c.wav")
    out = tmp_path / "piece.wav"
    assert error(curate(folder, "-o", out)) == f"Error: {folder / 'c.wav'} {says}"
    assert not out.exists()


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (_broken_link, "is a broken link (to gone.wav): fix it, or remove it."),
        (_link_loop, "is a link that loops back on itself: fix it, or remove it."),
        (lambda path: None, "does not exist."),
    ],
    ids=["broken_link", "link_loop", "missing"],
)
def test_a_clip_named_on_the_command_line_that_is_not_a_file_is_named_so(
    tmp_path: Path, make: Callable[[Path], None], says: str
) -> None:
    """Named directly, a broken link or a link loop was only "Path 'c.wav' does not exist" (click's
    check, before ours; found by an operator's audit)."""
    clip = tmp_path / "c.wav"
    make(clip)
    out = tmp_path / "piece.wav"
    assert error(curate(clip, "-o", out)) == f"Error: {clip} {says}"
    assert not out.exists()


def test_hidden_entries_and_folders_in_a_folder_stay_silently_skipped(tmp_path: Path) -> None:
    pytest.importorskip("chromaprint")
    folder = clips(tmp_path / "F")
    os.mkfifo(folder / "._a.wav")
    (folder / "._b.wav").symlink_to("gone.wav")
    (folder / "sub.wav").mkdir()  # a folder in a folder is not looked into
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = curate(folder, "-o", out_dir / "piece.wav")
    assert result.exit_code == 0, result.output
    assert "a.wav" in result.output and "b.wav" in result.output
    assert [path.name for path in out_dir.iterdir()] == ["piece.wav"]  # nothing left of the write check


@pytest.mark.skipif(not Path("/sys/kernel").is_dir(), reason="needs Linux's /sys")
@pytest.mark.parametrize("option", ["-o", "--picture"])
def test_an_output_where_no_file_can_be_created_is_refused_before_the_work(
    tmp_path: Path, option: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/sys refuses new files even to root, whom its permissions let write; the permission check is
    passed here as it is for root, so only trying to create a file can tell. The clip that is not audio
    would stop the work at once: the output is refused before it."""
    folder = clips(tmp_path / "F")
    (folder / "c.wav").write_text("not audio: decoding would stop here")
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: True)
    path = Path("/sys") / ("piece.ogg" if option == "-o" else "strip.png")
    args = ["-o", path] if option == "-o" else ["-o", tmp_path / "piece.ogg", "--picture", path]
    line = error(curate(folder, *args))
    assert line.startswith(f"Error: {option} {path}: no file can be created in the folder /sys (")
    assert line.endswith("): write elsewhere.")
    assert not (tmp_path / "piece.ogg").exists()
