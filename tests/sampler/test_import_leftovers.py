"""`jukebot models import` killed mid-copy (SIGKILL: no clean-up runs) leaves its `<file>.<hex>.partial`
beside the target. `models list` says so, and the next writer of the model directory (an import or a
download, under the directory's lock) removes it; never one another writer holding the lock is writing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sampler.jukebox.checkpoint import written_in_place
from sampler.model_files import LOCK_FILE, model_path
from sampler.model_import import import_checkpoints
from tests.sampler.test_model_import import empty_model_dir, jukebot
from tests.tiny_model_dir import write_tiny_model_dir

REPO = Path(__file__).resolve().parents[2]

# What a killed `jukebot models import` does: half the checkpoint copied into its .partial file, then
# SIGKILL (the out-of-memory killer, `kill -9`), at that known point: no `finally` runs.
KILLED_MID_COPY = """
import os, shutil, signal, sys
from pathlib import Path

def copy_half_then_die(src, dst, *args, **kwargs):
    data = Path(src).read_bytes()
    with open(dst, "wb") as out:
        out.write(data[: len(data) // 2])
    os.kill(os.getpid(), signal.SIGKILL)

shutil.copyfile = copy_half_then_die
from sampler.model_import import import_checkpoints
import_checkpoints(Path(sys.argv[1]), Path(sys.argv[2]), name="vqvae", replace=True)
"""


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model_dir(tmp_path_factory.mktemp("originals"), models=("1b_lyrics",))


def killed_import(source: Path, model_dir: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_MID_COPY, str(source), str(model_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr


def partials(model_dir: Path) -> list[Path]:
    return sorted(model_dir.rglob("*.partial"))


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL and flock")
def test_a_killed_import_leaves_a_partial_that_list_shows_and_the_next_import_removes(
    originals: Path, tmp_path: Path
) -> None:
    model_dir = empty_model_dir(originals, tmp_path / "models")
    source = model_path(originals, "vqvae")
    killed_import(source, model_dir)
    [first] = partials(model_dir)
    assert first.name.startswith("vqvae.pth.tar.") and first.stat().st_size > 0

    listed = jukebot(model_dir, "list")
    assert listed.exit_code == 0, listed.output
    line = next(line for line in listed.output.splitlines() if line.strip().startswith("vqvae"))
    assert "missing; 1 leftover partial file (" in line and "from an interrupted import" in line, line
    assert "removed by the next `jukebot models import` or `jukebot models download`" in line

    killed_import(source, model_dir)  # a new name each time: the earlier one is removed, not piled up
    [second] = partials(model_dir)
    assert second != first and not first.exists()
    (model_dir / "5b" / "vqvae.pth.tar.abcdef01.partial").write_bytes(b"another")
    listed = jukebot(model_dir, "list").output
    assert "2 leftover partial files (" in listed

    imported = jukebot(model_dir, "import", str(source), "--name=vqvae")
    assert imported.exit_code == 0, imported.output
    assert "vqvae: imported and verified" in imported.output
    assert partials(model_dir) == []
    assert "leftover" not in jukebot(model_dir, "list").output


def test_any_import_removes_every_checkpoints_leftovers_but_not_other_files(
    originals: Path, tmp_path: Path
) -> None:
    model_dir = empty_model_dir(originals, tmp_path / "models")
    prior = model_path(model_dir, "prior_1b_lyrics")
    prior.parent.mkdir(parents=True, exist_ok=True)
    stale = prior.with_name(prior.name + ".0123abcd.partial")
    stale.write_bytes(b"half a prior")
    mine = prior.with_name("notes.partial")  # not a name the writer gives: someone else's
    mine.write_bytes(b"keep")
    messages: list[str] = []

    import_checkpoints(model_path(originals, "vqvae"), model_dir, name="vqvae", notify=messages.append)

    assert not stale.exists() and mine.read_bytes() == b"keep"
    assert any("removed 1 leftover partial file" in message for message in messages), messages


@pytest.mark.skipif(os.name != "posix", reason="flock")
def test_an_import_waits_for_the_lock_and_leaves_a_live_writers_partial_alone(
    originals: Path, tmp_path: Path
) -> None:
    import fcntl

    model_dir = empty_model_dir(originals, tmp_path / "models")
    waiting = threading.Event()
    errors: list[BaseException] = []

    def notify(message: str) -> None:
        if message.startswith("waiting for another download or import"):
            waiting.set()

    def run() -> None:
        try:
            import_checkpoints(model_path(originals, "vqvae"), model_dir, name="vqvae", notify=notify)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with open(model_dir / LOCK_FILE, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another writer, mid-import of the same file
        with written_in_place(model_path(model_dir, "vqvae")) as live:
            live.write_bytes(b"being written")
            worker = threading.Thread(target=run)
            worker.start()
            assert waiting.wait(timeout=30)
            assert live.read_bytes() == b"being written"  # still there: its writer holds the lock
        fcntl.flock(held, fcntl.LOCK_UN)
    worker.join(timeout=120)
    assert not worker.is_alive() and errors == []
    assert partials(model_dir) == []


def test_leftover_partials_finds_what_written_in_place_leaves(tmp_path: Path) -> None:
    from sampler.model_files import leftover_partials

    target = tmp_path / "5b" / "vqvae.pth.tar"
    target.parent.mkdir()

    class Killed(BaseException):
        pass

    with pytest.raises(Killed), written_in_place(target) as partial:
        partial.write_bytes(b"half")
        assert leftover_partials(target) == [partial]  # what a writer killed now would leave
        raise Killed
    assert leftover_partials(target) == []
