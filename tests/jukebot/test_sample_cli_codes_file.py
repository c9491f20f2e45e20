"""`jukebot sample` refuses, as usage errors and before anything is written, a codes file it cannot
use (saying why in words) and lyrics given twice."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import Result

from tests.jukebot.test_sample_cli import model_dir, single_thread
from tests.jukebot.test_sample_cli_hardening import run

__all__ = ["model_dir", "single_thread"]  # fixtures shared with the end-to-end tests

pytestmark = pytest.mark.usefixtures("single_thread")

LABELS = ["--artist=Alan Jackson", "--genre=Country"]
HINT = "pass a data.pth.tar written by jukebot sample"


def usage_error(result: Result) -> str:
    """The one `Error:` line of a run refused as a usage error (exit status 2), without torch's advice."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "weights_only" not in result.output and "arbitrary code" not in result.output, result.output
    (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    return line


def test_lyrics_and_a_lyrics_file_together_are_refused(model_dir: Path, tmp_path: Path) -> None:
    lyrics = tmp_path / "lyrics.txt"
    lyrics.write_text("from the file")
    out = tmp_path / "song"
    line = usage_error(run(model_dir, out, *LABELS, "--lyrics=typed", f"--lyrics_file={lyrics}"))
    assert line == "Error: use --lyrics or --lyrics_file, not both"
    assert not out.exists()


def test_a_lyrics_file_alone_is_still_read(model_dir: Path, tmp_path: Path) -> None:
    lyrics = tmp_path / "lyrics.txt"
    lyrics.write_text("from the file")
    result = run(
        model_dir, tmp_path / "song", *LABELS, "--levels=1", "--n_samples=1", f"--lyrics_file={lyrics}"
    )
    assert result.exit_code == 0, result.output
    assert torch.load(tmp_path / "song/level_2/data.pth.tar", weights_only=True)["labels"]["lyrics"] == (
        "from the file"
    )


def _missing(path: Path) -> None:
    pass


def _broken_link(path: Path) -> None:
    path.symlink_to(path.with_name("gone.pth.tar"))


def _link_loop(path: Path) -> None:
    path.symlink_to(path.name)


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _not_torch(path: Path) -> None:
    path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt not a codes file at all")


def _plain_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps({"zs": [1, 2, 3]}))


def _plain_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "a zip, not a torch file")


def _numpy_inside(path: Path) -> None:
    """A torch file holding an object that only an unrestricted (code-running) load would build."""
    torch.save({"zs": np.zeros((3, 2, 4))}, path)


def _cut_short(path: Path) -> None:
    torch.save({"zs": [torch.zeros(1, 8, dtype=torch.long)] * 3}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _long_cut_short(path: Path) -> None:
    """Cut past the first few KB, torch's reader fails with EINVAL (an OSError), not a read error."""
    torch.save({"zs": [torch.zeros(1, 4000, dtype=torch.long)] * 3}, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])


def _old_format_cut_short(path: Path) -> None:
    torch.save({"zs": [torch.zeros(1, 8, dtype=torch.long)] * 3}, path, _use_new_zipfile_serialization=False)
    path.write_bytes(path.read_bytes()[:40])


def _no_codes(path: Path) -> None:
    torch.save({"model": torch.zeros(3)}, path)


def _float_codes(path: Path) -> None:
    torch.save({"zs": [torch.rand(1, 8)] * 3}, path)


def _uneven_samples(path: Path) -> None:
    sizes = ((2, 8), (1, 4), (2, 2))
    torch.save({"zs": [torch.zeros(*size, dtype=torch.long) for size in sizes]}, path)


NOT_CODES = "is not a jukebot or Jukebox codes file"
DAMAGED = (
    "is damaged (cut short, or changed since it was written): write it again with jukebot sample, "
    "or pass another file"
)


@pytest.mark.timeout(60)  # a FIFO's read would wait for a writer forever
@pytest.mark.parametrize(
    ("make", "says"),
    [
        (_missing, f"does not exist: {HINT}"),
        (_broken_link, f"is a broken link: {HINT}"),
        (_link_loop, f"is a loop of links: {HINT}"),
        (_fifo, f"is a FIFO (named pipe): {HINT}"),
        (_empty, f"is empty: {HINT}"),
        (_not_torch, f"{NOT_CODES} (not a file torch.save wrote): {HINT}"),
        (_plain_pickle, f"{NOT_CODES} (not a file torch.save wrote): {HINT}"),
        (_plain_zip, f"{NOT_CODES} (a zip archive, not a file torch.save wrote): {HINT}"),
        (_numpy_inside, f"{NOT_CODES} (it holds Python objects other than codes): {HINT}"),
        (_cut_short, DAMAGED),
        (_long_cut_short, DAMAGED),
        (_old_format_cut_short, DAMAGED),
        (_no_codes, f"{NOT_CODES} (no codes for 3 levels under 'zs'): {HINT}"),
        (_float_codes, f"holds codes that are not whole numbers: {HINT}"),
        (_uneven_samples, f"holds no samples or a different number per level (2, 1, 2): {HINT}"),
    ],
    ids=lambda value: value.__name__.lstrip("_") if callable(value) else "",
)
@pytest.mark.parametrize("mode", ["continue", "upsample"])
def test_a_codes_file_that_cannot_be_used_is_a_usage_error_in_words(
    model_dir: Path, tmp_path: Path, make: Callable[[Path], None], says: str, mode: str
) -> None:
    codes_file = tmp_path / "data.pth.tar"
    make(codes_file)
    out = tmp_path / "song"
    line = usage_error(run(model_dir, out, *LABELS, f"--mode={mode}", f"--codes_file={codes_file}"))
    assert line == f"Error: Invalid value for --codes_file: {codes_file} {says}"
    assert not out.exists()


def test_a_codes_file_that_cannot_be_opened_says_so(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(Root reads any file: the permission error is made here.)"""
    codes_file = tmp_path / "data.pth.tar"
    _no_codes(codes_file)
    real_open = Path.open

    def refusing_open(self: Path, *args: object, **kwargs: object) -> object:
        if self == codes_file:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(Path, "open", refusing_open)
    line = usage_error(
        run(model_dir, tmp_path / "song", *LABELS, "--mode=continue", f"--codes_file={codes_file}")
    )
    assert line == f"Error: Invalid value for --codes_file: {codes_file} cannot be read (Permission denied)"


def test_a_codes_file_with_other_samples_than_n_samples_is_a_usage_error(
    model_dir: Path, tmp_path: Path
) -> None:
    preview = run(model_dir, tmp_path / "preview", *LABELS, "--levels=1", "--n_samples=1")
    assert preview.exit_code == 0, preview.output
    top = tmp_path / "preview/level_2/data.pth.tar"
    line = usage_error(
        run(model_dir, tmp_path / "up", "--mode=upsample", f"--codes_file={top}", "--n_samples=2")
    )
    assert line == f"Error: Invalid value for --n_samples: {top} holds 1 samples; pass --n_samples=1"
    assert not (tmp_path / "up").exists()
