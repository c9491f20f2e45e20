"""`jukebot models import` writes files as a download does, and refuses a folder it cannot write.

Imported checkpoints get the mode a downloaded one gets (0666 less the umask), not a temporary file's
0600: the Docker worker runs as another user (uid 10001) and must be able to read them. A model
subfolder this user cannot write is one sentence naming it, and nothing is left half-written.

As root, the tests marked `without_read_privileges` run in a child process without the capabilities
that let root write anything (tests/unprivileged.py).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from jukebot.cli import main
from sampler.jukebox.registry import CHECKPOINTS
from sampler.model_files import download_file, model_path
from sampler.model_import import ModelImportError, _install_copy
from tests.sampler.http_fixture import running_file_server
from tests.sampler.test_model_files import quick
from tests.sampler.test_model_import import empty_model_dir, originals, write_hf_copy
from tests.unprivileged import SetMode, set_mode, without_read_privileges

__all__ = ["originals", "set_mode"]


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    value: int = request.param
    before = os.umask(value)
    try:
        yield value
    finally:
        os.umask(before)


def jukebot_import(model_dir: Path, *args: str) -> Result:
    result = CliRunner().invoke(main, ["models", "import", *args], env={"JUKEBOT_MODEL_DIR": str(model_dir)})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def downloaded_mode(originals: Path, into: Path) -> int:
    """The mode `jukebot models download` gives a file, under the umask in force."""
    with running_file_server() as server:
        server.serve(CHECKPOINTS["vqvae"].path, model_path(originals, "vqvae").read_bytes())
        result = download_file("vqvae", into, [server.url], options=quick())
    return mode(result.path)


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002], indirect=True, ids=["022", "027", "002"])
def test_imported_files_get_the_mode_downloaded_files_get(
    originals: Path, tmp_path: Path, umask: int
) -> None:
    expected = 0o666 & ~umask
    assert downloaded_mode(originals, tmp_path / "downloaded") == expected

    copies = empty_model_dir(originals, tmp_path / "copies")
    copied = jukebot_import(copies, str(originals / "5b"))  # original files, named by their path
    assert copied.exit_code == 0, copied.output
    files = sorted((copies / "5b").glob("*.pth.tar"))
    assert len(files) == 3 and {path: mode(path) for path in files} == {path: expected for path in files}

    hf = write_hf_copy(originals, tmp_path / "jukebox-1b-lyrics", shards=2)
    split = empty_model_dir(originals, tmp_path / "split")
    imported = jukebot_import(split, str(hf))
    assert imported.exit_code == 0, imported.output
    files = sorted(split.rglob("*.pth.tar"))
    assert len(files) == 4 and {path: mode(path) for path in files} == {path: expected for path in files}


def unwritable_sentence(folder: Path) -> str:
    return (
        f"Error: Cannot write to {folder} in the model directory (permission denied): fix its permissions "
        "(the user running jukebot needs write access)."
    )


def error_lines(result: Result) -> list[str]:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    return [line for line in result.output.splitlines() if line.startswith("Error:")]


def contents(folder: Path) -> list[str]:
    return sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*"))


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("kind", ["original", "hugging_face"])
@without_read_privileges
def test_an_import_into_a_folder_that_cannot_be_written_is_one_sentence_and_writes_nothing(
    kind: str, originals: Path, tmp_path: Path, set_mode: SetMode
) -> None:
    source = (
        model_path(originals, "vqvae")
        if kind == "original"
        else write_hf_copy(originals, tmp_path / "jukebox-1b-lyrics", shards=1)
    )
    model_dir = empty_model_dir(originals, tmp_path / "models")
    before = contents(model_dir)
    set_mode(model_dir / "5b", 0o555)  # the VQ-VAE and upsamplers go there; the top prior elsewhere
    result = jukebot_import(model_dir, str(source))
    assert error_lines(result) == [unwritable_sentence(model_dir / "5b")]
    assert (
        contents(model_dir) == before
    )  # a Hugging Face copy: not even the top prior, whose folder could be written


@without_read_privileges
def test_a_write_refused_midway_leaves_nothing_half_written(
    originals: Path, tmp_path: Path, set_mode: SetMode
) -> None:
    model_dir = empty_model_dir(originals, tmp_path / "models")
    before = contents(model_dir)
    set_mode(model_dir / "5b", 0o555)  # past the check before writing, as if it changed since
    with pytest.raises(ModelImportError) as info:
        _install_copy("vqvae", model_path(originals, "vqvae"), model_dir, replace=False, notify=print)
    assert f"{info.value}" == unwritable_sentence(model_dir / "5b").removeprefix("Error: ")
    assert contents(model_dir) == before
