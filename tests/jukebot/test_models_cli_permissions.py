"""`jukebot models` and `jukebot doctor` as an operator runs them, when the model directory holds a
file this user may not read, a folder it may not look into or write, or a sidecar changed since the
last check: one clear sentence each, never a traceback, nothing moved aside that is not damaged.

As root, the tests marked `without_read_privileges` run in a child process without the capabilities
that let root read anything (tests/unprivileged.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from jukebot.cli import main
from sampler.loading import sidecar_path
from sampler.model_files import model_path
from tests.tiny_model_dir import write_tiny_model_dir
from tests.unprivileged import SetMode, set_mode, without_read_privileges

__all__ = ["set_mode"]


@pytest.fixture
def model_dir(clean_env: Path) -> Path:
    return write_tiny_model_dir(clean_env / "models", models=("1b_lyrics",))


def jukebot(model_dir: Path, *args: str) -> Result:
    """`jukebot …` as an operator runs it: the real verifier, settings from the environment, no GPUs."""
    result = CliRunner().invoke(
        main, list(args), env={"JUKEBOT_MODEL_DIR": str(model_dir), "JUKEBOT_GPUS": "none"}
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def line_starting(result: Result, start: str) -> str:
    (line,) = [line for line in result.output.splitlines() if line.startswith(start)]
    return line


@without_read_privileges
def test_a_file_that_cannot_be_read_is_a_permission_to_fix_not_a_download(
    model_dir: Path, set_mode: SetMode
) -> None:
    assert jukebot(model_dir, "models", "verify").exit_code == 0
    vqvae = model_path(model_dir, "vqvae")
    set_mode(vqvae, 0)
    problem = (
        f"cannot read {vqvae} (permission denied): fix its permissions "
        "(the user running jukebot needs read access)"
    )
    verified = jukebot(model_dir, "models", "verify")
    assert verified.exit_code == 1
    assert line_starting(verified, "UNREADABLE") == f"UNREADABLE vqvae: {problem}."
    assert "download" not in verified.output and "BAD" not in verified.output
    assert vqvae.is_file() and not vqvae.with_name(vqvae.name + ".corrupt").exists()
    listed = jukebot(model_dir, "models", "list")
    assert line_starting(listed, "1b_lyrics") == f"1b_lyrics (lyrics): {problem}"
    vqvae_lines = [line for line in listed.output.splitlines() if line.startswith("  vqvae")]
    assert len(vqvae_lines) == 3 and all(line.endswith(f"  {problem}") for line in vqvae_lines)
    doctor = jukebot(model_dir, "doctor")
    assert line_starting(doctor, "warn model     1b_lyrics") == f"warn model     1b_lyrics: {problem}"
    set_mode(vqvae, 0o644)  # nothing was recorded against it: verified as before
    assert "ok   model     1b_lyrics: verified" in jukebot(model_dir, "doctor").output


@without_read_privileges
def test_a_folder_that_cannot_be_looked_into_is_one_sentence(model_dir: Path, set_mode: SetMode) -> None:
    folder = model_dir / "5b"
    set_mode(folder, 0)
    sentence = (
        f"Cannot read {folder} in the model directory (permission denied): fix its permissions or set "
        "JUKEBOT_MODEL_DIR to a folder this user can read."
    )
    for command in (["models", "list"], ["models", "verify"], ["models", "verify", "1b_lyrics"]):
        result = jukebot(model_dir, *command)
        assert result.exit_code == 1 and result.output == f"Error: {sentence}\n", command
    doctor = jukebot(model_dir, "doctor")
    assert line_starting(doctor, "warn models") == f"warn models    {sentence}"


@without_read_privileges
def test_a_bad_file_in_a_folder_that_cannot_be_written_is_reported_without_a_traceback(
    model_dir: Path, set_mode: SetMode
) -> None:
    prior = model_path(model_dir, "upsampler_level_0")
    prior.write_bytes(prior.read_bytes()[:1000])
    set_mode(prior.parent, 0o555)  # as a read-only mount would refuse the rename
    result = jukebot(model_dir, "models", "verify")
    assert result.exit_code == 1
    bad = line_starting(result, "BAD")
    assert bad.startswith(f"BAD upsampler_level_0: {prior}: it is 1000 B, but a genuine upsampler_level_0")
    assert f"It could not be moved aside, because {prior.parent} cannot be written (Permission denied)" in bad
    assert prior.is_file() and "Error: 1 problem(s) found" in result.output


def test_a_changed_sidecar_is_seen_by_list_and_doctor(model_dir: Path) -> None:
    assert jukebot(model_dir, "models", "verify").exit_code == 0
    assert "ok   model     1b_lyrics: verified" in jukebot(model_dir, "doctor").output
    sidecar = sidecar_path(model_path(model_dir, "vqvae"))
    sidecar.write_text("garbage{\n")
    listed = jukebot(model_dir, "models", "list")
    assert "  verified (" not in listed.output
    # the model cannot be loaded with that sidecar: not "ready", and the sidecar is what to fix
    assert f"1b_lyrics (lyrics): vqvae: cannot read {sidecar}: " in listed.output
    doctor = jukebot(model_dir, "doctor").output
    assert "1b_lyrics: verified" not in doctor
    assert f"warn model     1b_lyrics: vqvae: cannot read {sidecar}: " in doctor


@without_read_privileges
@pytest.mark.parametrize("command", ["worker", "run"])
def test_workers_refuse_a_model_directory_behind_a_folder_they_may_not_enter(
    clean_env: Path, set_mode: SetMode, command: str
) -> None:
    """`model_dir_refusal` called Path.is_dir, which raised PermissionError: a traceback, where `models
    list` said what to fix."""
    closed = clean_env / "closed"
    model_dir = closed / "models"
    model_dir.mkdir(parents=True)
    set_mode(closed, 0o600)  # readable, not searchable
    result = CliRunner().invoke(
        main,
        [command],
        env={"JUKEBOT_MODEL_DIR": str(model_dir), "JUKEBOT_GPUS": "cpu", "DISCORD_TOKEN": "a.b.c"},
    )
    assert result.exit_code == 1, result.output
    assert result.output.startswith(f"Error: Cannot read the model directory {model_dir} (Permission denied)")
