"""A folder on a file system mounted read-only: no permissions to change, so the commands say what it
is instead of advising to fix its permissions. Real read-only tmpfs mounts (root only: skipped where
this machine refuses to mount)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from jukebot.cli import main
from tests.jukebot.test_curate_cli import _two_clips
from tests.jukebot.test_sample_cli_hardening import run
from tests.tiny_model_dir import write_tiny_model_dir


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "read-only"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"this machine mounts no read-only tmpfs for us: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_sample_into_a_read_only_mount(read_only: Path, tmp_path: Path) -> None:
    models = write_tiny_model_dir(tmp_path / "models")
    result = run(models, read_only / "song", "--levels=1")
    assert result.exit_code == 2
    assert (
        f"{read_only / 'song'} cannot be written: {read_only} is on a read-only file system; pass another --name"
    ) in " ".join(result.output.split()), result.output


def test_curate_onto_a_read_only_mount(read_only: Path, tmp_path: Path) -> None:
    out = read_only / "piece.ogg"
    result = CliRunner().invoke(main, ["curate", *_two_clips(tmp_path), "-o", str(out)])
    assert result.exit_code == 2
    assert (
        f"-o {out}: the folder {read_only} cannot be written: it is on a read-only file system, or write elsewhere."
    ) in " ".join(result.output.split()), result.output


def test_a_sqlite_database_on_a_read_only_mount(
    read_only: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = read_only / "jukebot.sqlite3"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{database}")
    result = CliRunner().invoke(main, ["db", "upgrade"])
    assert (result.exit_code, result.output) == (
        1,
        f"Error: DATABASE_URL's SQLite file {database} cannot be created: {read_only} is on a read-only "
        "file system. Point DATABASE_URL at a folder on a writable one.\n",
    )


def test_a_model_directory_on_a_read_only_mount(
    read_only: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUKEBOT_MODEL_DIR", str(read_only))
    result = CliRunner().invoke(main, ["models", "download", "1b_lyrics"])
    assert result.exit_code == 1, result.output
    assert (
        f"Cannot write to the model directory {read_only}: it is on a read-only file system. Fetch the files "
        "where its source is writable, or set JUKEBOT_MODEL_DIR to a folder this user can write."
    ) in result.output
