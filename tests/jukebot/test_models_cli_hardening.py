"""`jukebot models` and the doctor's model check: a model directory or file that cannot be used gets
one sentence saying what to fix, never a traceback, and nothing stored is lost."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from jukebot.cli import main
from jukebot.doctor import Verdict, check_models
from jukebot.settings import load_settings
from sampler.loading import expected_shapes_for, sidecar_path
from sampler.model_files import CheckpointVerifier, model_path
from tests.sampler.http_fixture import FileServer, running_file_server
from tests.tiny_model_dir import write_tiny_model_dir

SIDECAR_FIX = (
    "fix it (delete it only if the checkpoint has the published architecture: without it, it is "
    "checked as one)"
)
UNREADABLE = Path("/proc/1/root/nope")  # even root may not look inside another process's root
UNCREATABLE = Path("/proc/jukebot-models")  # nothing can be created in /proc


@pytest.fixture
def server() -> Iterator[FileServer]:
    with running_file_server() as running:
        yield running


def models(model_dir: Path, *args: str, **env: str) -> Result:
    """`jukebot models …` as an operator runs it: the real verifier, settings from the environment."""
    return CliRunner().invoke(main, ["models", *args], env={"JUKEBOT_MODEL_DIR": str(model_dir), **env})


def one_sentence(result: Result) -> str:
    assert result.exit_code != 0, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def unreadable() -> Path:
    try:
        os.stat(UNREADABLE)
    except PermissionError:
        return UNREADABLE
    except OSError:
        pass
    pytest.skip(f"{UNREADABLE} is not refused here")


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("command", [["list"], ["verify"], ["verify", "1b_lyrics"], ["download", "vqvae"]])
def test_a_model_directory_that_cannot_be_read_is_one_sentence(command: list[str]) -> None:
    result = models(unreadable(), *command)
    assert one_sentence(result) == (
        f"Error: Cannot read the model directory {UNREADABLE} (Permission denied): fix its permissions "
        "or set JUKEBOT_MODEL_DIR to a folder this user can read."
    )


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("command", [["list"], ["verify"], ["download", "vqvae"], ["import", "SOURCE"]])
def test_a_model_directory_that_is_a_file_is_one_sentence(tmp_path: Path, command: list[str]) -> None:
    a_file = tmp_path / "models"
    a_file.write_text("not a folder\n")
    source = write_tiny_model_dir(tmp_path / "source")
    args = [str(model_path(source, "vqvae")) if arg == "SOURCE" else arg for arg in command]
    result = models(a_file, *args, JUKEBOT_MODEL_MIRRORS="http://127.0.0.1:9/")
    assert one_sentence(result) == (
        f"Error: The model directory {a_file} is a file, not a folder: set JUKEBOT_MODEL_DIR to a folder."
    )
    assert a_file.read_text() == "not a folder\n"


@pytest.mark.usefixtures("clean_env")
def test_a_model_directory_that_cannot_be_created_is_one_sentence() -> None:
    if not Path("/proc/self").exists():
        pytest.skip("no /proc here")
    result = models(UNCREATABLE, "download", "vqvae", JUKEBOT_MODEL_MIRRORS="http://127.0.0.1:9/")
    line = one_sentence(result)
    assert line.startswith(f"Error: Cannot create the model directory {UNCREATABLE} (")
    assert line.endswith("): create it, or set JUKEBOT_MODEL_DIR to a folder this user can write.")


@pytest.mark.usefixtures("clean_env")
def test_the_doctor_reports_an_unreadable_model_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUKEBOT_MODEL_DIR", str(unreadable()))
    checks = list(check_models(load_settings(), CheckpointVerifier()))
    assert [(check.name, check.verdict) for check in checks] == [("models", Verdict.FAIL)]
    assert checks[0].message.startswith(f"Cannot read the model directory {UNREADABLE}")


def write_bad_sidecar(model_dir: Path) -> Path:
    sidecar = sidecar_path(model_path(model_dir, "upsampler_level_0"))
    sidecar.write_text("garbage{\n")
    return sidecar


@pytest.mark.usefixtures("clean_env")
def test_a_malformed_sidecar_is_reported_and_the_checkpoint_kept(tmp_path: Path) -> None:
    model_dir = write_tiny_model_dir(tmp_path / "models")
    sidecar = write_bad_sidecar(model_dir)
    checkpoint = model_path(model_dir, "upsampler_level_0")
    weights = checkpoint.read_bytes()
    result = models(model_dir, "verify")
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    bad = next(line for line in result.output.splitlines() if line.startswith("BAD"))
    assert bad.startswith(f"BAD upsampler_level_0: {checkpoint}: cannot read {sidecar}: ")
    assert bad.endswith(f"; {SIDECAR_FIX}. The checkpoint itself was left in place.")
    assert "OK  vqvae" in result.output and "1 problem(s) found" in result.output
    assert (
        checkpoint.read_bytes() == weights and not checkpoint.with_name(checkpoint.name + ".corrupt").exists()
    )


@pytest.mark.usefixtures("clean_env")
def test_models_list_names_files_to_fetch_beside_a_malformed_sidecar(tmp_path: Path) -> None:
    """The headline named the sidecar only, while a file was missing too, which `doctor` said (found by
    an operator's audit)."""
    model_dir = write_tiny_model_dir(tmp_path / "models")
    write_bad_sidecar(model_dir)
    model_path(model_dir, "prior_1b_lyrics").unlink()
    result = models(model_dir, "list")
    assert result.exit_code == 0, result.output
    headline = next(line for line in result.output.splitlines() if line.startswith("1b_lyrics ("))
    assert headline.startswith("1b_lyrics (lyrics): upsampler_level_0: cannot read "), headline
    assert headline.endswith(f"{SIDECAR_FIX}; 1 of 4 files to fetch: jukebot models download 1b_lyrics")


@pytest.mark.usefixtures("clean_env")
def test_the_doctor_reports_a_malformed_sidecar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_dir = write_tiny_model_dir(tmp_path / "models")
    sidecar = write_bad_sidecar(model_dir)
    monkeypatch.setenv("JUKEBOT_MODEL_DIR", str(model_dir))
    verifier = CheckpointVerifier(expected_shapes_for=lambda name: expected_shapes_for(name, model_dir))
    checks = {check.message.split(":")[0]: check for check in check_models(load_settings(), verifier)}
    check = checks["1b_lyrics"]
    assert check.verdict is Verdict.WARN
    assert f"upsampler_level_0: cannot read {sidecar}: " in check.message
    # what fixes it is the sidecar: `models verify` would only say the same again
    assert check.message.endswith(SIDECAR_FIX)


@pytest.mark.usefixtures("clean_env")
def test_a_download_checked_against_a_malformed_sidecar_fails_for_that_file(
    tmp_path: Path, server: FileServer
) -> None:
    model_dir = write_tiny_model_dir(tmp_path / "models")
    sidecar = write_bad_sidecar(model_dir)
    model_path(model_dir, "upsampler_level_0").unlink()
    result = models(model_dir, "download", "upsampler_level_0", JUKEBOT_MODEL_MIRRORS=f"{server.url}/models/")
    assert result.exit_code == 1
    assert (
        f"FAILED upsampler_level_0: upsampler_level_0 cannot be checked once downloaded: cannot read {sidecar}"
        in result.output
    )
    assert "1 of 1 files could not be downloaded" in result.output


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("flag", "value"),
    [("--connect-timeout", "nan"), ("--connect-timeout", "inf"), ("--timeout", "inf"), ("--timeout", "nan")],
)
def test_timeouts_must_be_finite(tmp_path: Path, flag: str, value: str) -> None:
    result = models(tmp_path / "models", "download", "vqvae", flag, value)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert f"Invalid value for '{flag}': must be a positive number of seconds, got {value}" in result.output
    assert not (tmp_path / "models").exists()


@pytest.mark.usefixtures("clean_env")
def test_a_damaged_file_names_its_own_model_in_the_advice(tmp_path: Path) -> None:
    model_dir = write_tiny_model_dir(tmp_path / "models")
    vqvae = model_path(model_dir, "vqvae")
    vqvae.write_bytes(b"\x80" + b"garbage" * vqvae.stat().st_size)  # as large as it should be
    verified = models(model_dir, "verify", "vqvae")
    assert verified.exit_code == 1
    bad = next(line for line in verified.output.splitlines() if line.startswith("BAD"))
    assert "<model>" not in verified.output
    assert bad.endswith(
        "re-download it with `jukebot models download vqvae`; moved aside to "
        f"{model_path(model_dir, 'vqvae')}.corrupt."
    )


@pytest.mark.usefixtures("clean_env")
def test_import_of_a_damaged_file_says_to_import_a_good_copy(tmp_path: Path) -> None:
    damaged = tmp_path / "vqvae.pth.tar"
    damaged.write_bytes(b"\x80garbage, not a pickle at all")
    result = models(tmp_path / "models", "import", str(damaged))
    line = one_sentence(result)
    assert "<model>" not in result.output and "jukebot models download" not in result.output
    assert line.startswith(f"Error: Cannot import {damaged}: cannot read checkpoint {damaged}: ")
    assert line.endswith("; import a good copy of it instead.")
    assert not (tmp_path / "models").exists()


@pytest.mark.usefixtures("clean_env")
def test_import_of_an_empty_folder_says_it_holds_no_checkpoints(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    line = one_sentence(models(tmp_path / "models", "import", str(empty)))
    assert line.startswith(f"Error: {empty} holds no checkpoint files: give original *.pth.tar files")
    assert "safetensors`" not in line and "install" not in line


@pytest.mark.usefixtures("clean_env")
def test_an_empty_name_or_path_is_refused_not_read_as_all_or_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unset shell variable (`jukebot models import "$DIR"`): the empty path read as ".", and the
    checkpoints in the working directory were imported; `verify ""` verified everything and advised
    "run `jukebot models download `"."""
    model_dir = write_tiny_model_dir(tmp_path / "models", models=("1b_lyrics",))
    here = tmp_path / "here"
    here.mkdir()
    (here / "vqvae.pth.tar").write_bytes(model_path(model_dir, "vqvae").read_bytes())
    monkeypatch.chdir(here)
    target = tmp_path / "empty"

    imported = models(target, "import", "")
    assert imported.exit_code == 2, imported.output
    assert "Invalid value for 'PATH': it is empty; give the folder or file to import" in imported.output
    assert not target.exists()

    verified = models(model_dir, "verify", "")
    assert one_sentence(verified).startswith("Error: Unknown model or file '': use one of 5b, ")
    assert "OK " not in verified.output and "download `" not in verified.output
