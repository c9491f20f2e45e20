"""`jukebot sample`'s own files: one run per NAME at a time, checkpoints replaced whole (never cut
short by a kill or a full disk), and a damaged saved state set aside so that the same command reruns."""

from __future__ import annotations

import builtins
import errno
import fcntl
import io
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch

from sampler.jukebox.cascade import Cascade, CascadeState
from tests.jukebot.test_sample_cli import codes, model_dir, single_thread
from tests.jukebot.test_sample_cli_hardening import one_sentence, run, snapshot

__all__ = ["model_dir", "single_thread"]  # fixtures shared with the end-to-end tests

pytestmark = pytest.mark.usefixtures("single_thread")

PREVIEW = ("--levels=1",)  # 3 top-level windows: quick, and enough to stop between two


def on_each_window(monkeypatch: pytest.MonkeyPatch, after: Callable[[int], None]) -> None:
    """`after(n)` runs once the run has stored its n-th window (n from 1)."""
    real_sample = Cascade.sample

    def sample(self: Cascade, request: Any, state: Any = None, **kwargs: Any) -> Any:
        stored = 0

        def on_window(current: Any) -> None:
            nonlocal stored
            kwargs["on_window"](current)
            stored += 1
            after(stored)

        return real_sample(self, request, state, **(kwargs | {"on_window": on_window}))

    monkeypatch.setattr(Cascade, "sample", sample)


def stopped_after(model_dir: Path, out: Path, windows: int, *args: str) -> None:
    """A run of `args` into `out` stopped as Ctrl-C stops it, once `windows` windows are stored."""

    def stop(stored: int) -> None:
        if stored == windows:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        on_each_window(patch, stop)
        stopped = run(model_dir, out, *args)
    assert stopped.exit_code == 130, stopped.output


def windows_done(checkpoint: Path) -> int:
    return sum(CascadeState.from_bytes(checkpoint.read_bytes()).windows_done.values())


def same_as_a_fresh_run(model_dir: Path, out: Path, fresh: Path, *args: str) -> bool:
    made = run(model_dir, fresh, *args)
    assert made.exit_code == 0, made.output
    ours, theirs = codes(out / "level_2" / "data.pth.tar"), codes(fresh / "level_2" / "data.pth.tar")
    return all(a.equal(b) for a, b in zip(ours, theirs, strict=True))


# ---- one run per NAME at a time


@contextmanager
def held_as_a_run_holds_it(folder: Path, pid: int) -> Iterator[None]:
    """`folder`'s lock, taken as a `jukebot sample` run with process id `pid` takes it."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{pid}\n")
        handle.flush()
        yield


def test_a_run_into_a_folder_another_run_is_using_is_refused(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run B into run A's NAME (another seed) moved A's files to earlier-1 while A ran; A kept writing,
    B overwrote, and both said they had written the song."""
    out = tmp_path / "song"
    first = run(model_dir, out, *PREVIEW, "--seed=1")
    assert first.exit_code == 0, first.output
    before = {name: data for name, data in snapshot(out).items() if name != ".lock"}

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("a refused run loads no model")

    with held_as_a_run_holds_it(out, pid=4242):
        monkeypatch.setattr("sampler.loading.load_cascade", no_model)
        second = run(model_dir, out, *PREVIEW, "--seed=2")
        monkeypatch.undo()
    error = one_sentence(second)
    assert f"{out} is in use by another `jukebot sample` run (pid 4242)" in error, error
    assert {name: data for name, data in snapshot(out).items() if name != ".lock"} == before
    assert not (out / "earlier-1").exists()


def test_the_folder_is_locked_for_the_whole_run_and_free_after(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "song"
    free_at: list[int] = []

    def try_the_lock(stored: int) -> None:
        with open(out / ".lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            free_at.append(stored)

    on_each_window(monkeypatch, try_the_lock)
    result = run(model_dir, out, *PREVIEW)
    assert result.exit_code == 0, result.output
    assert free_at == [], f"another run could take {out} after windows {free_at}"
    with open(out / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released at the end


# ---- a saved state cut short or damaged


@pytest.mark.parametrize("damaged", [b"", b'{"fingerpr', b"[]", b"\xff\xfe"])
def test_a_checkpoint_json_cut_short_is_set_aside_and_the_same_command_runs(
    model_dir: Path, tmp_path: Path, damaged: bytes
) -> None:
    """A kill while checkpoint.json was rewritten in place left it cut short: every rerun crashed
    with a JSONDecodeError."""
    out = tmp_path / "song"
    stopped_after(model_dir, out, 2, *PREVIEW)
    saved = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.json").write_bytes(damaged)

    rerun = run(model_dir, out, *PREVIEW)
    assert rerun.exit_code == 0, rerun.output
    assert f"{out / 'checkpoint.json'} is damaged" in rerun.output
    assert f"moved to {out / 'earlier-1'}; this run starts over" in rerun.output
    assert "resuming from" not in rerun.output
    assert (out / "earlier-1" / "checkpoint.pt").read_bytes() == saved  # kept, not thrown away
    assert (out / "earlier-1" / "checkpoint.json").read_bytes() == damaged
    assert same_as_a_fresh_run(model_dir, out, tmp_path / "fresh", *PREVIEW)
    again = run(model_dir, out, *PREVIEW)
    assert again.exit_code == 0 and "resuming from" in again.output and "earlier-2" not in again.output


def _empty(data: bytes) -> bytes:
    return b""


def _cut_short(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _another_version(data: bytes) -> bytes:
    buffer = io.BytesIO()
    torch.save({"format": "a state format of another version", "codes": []}, buffer)
    return buffer.getvalue()


def _other_samples(data: bytes) -> bytes:  # readable, but not a state this run can go on from
    state = CascadeState.from_bytes(data)
    state.codes = [torch.cat([codes, codes]) for codes in state.codes]
    return state.to_bytes()


@pytest.mark.parametrize("damage", [_empty, _cut_short, _another_version, _other_samples])
def test_a_damaged_checkpoint_pt_is_set_aside_and_the_same_command_runs(
    model_dir: Path, tmp_path: Path, damage: Callable[[bytes], bytes]
) -> None:
    """A zero-length, cut short or other version's checkpoint.pt: a SamplingError traceback at every
    rerun (or an error naming nothing to do)."""
    out = tmp_path / "song"
    stopped_after(model_dir, out, 2, *PREVIEW)
    damaged = damage((out / "checkpoint.pt").read_bytes())
    (out / "checkpoint.pt").write_bytes(damaged)

    rerun = run(model_dir, out, *PREVIEW)
    assert rerun.exit_code == 0, rerun.output
    assert "Traceback" not in rerun.output
    assert f"{out / 'checkpoint.pt'} cannot be resumed from, as " in rerun.output
    assert f"moved to {out / 'earlier-1'}; this run starts over" in rerun.output
    assert (out / "earlier-1" / "checkpoint.pt").read_bytes() == damaged
    assert same_as_a_fresh_run(model_dir, out, tmp_path / "fresh", *PREVIEW)


def test_a_checkpoint_pt_without_its_record_is_kept(model_dir: Path, tmp_path: Path) -> None:
    """A checkpoint.pt with no checkpoint.json beside it (a run stopped between the two) was
    overwritten by the next run's first window."""
    out = tmp_path / "song"
    stopped_after(model_dir, out, 2, *PREVIEW)
    saved = (out / "checkpoint.pt").read_bytes()
    (out / "checkpoint.json").unlink()

    rerun = run(model_dir, out, *PREVIEW)
    assert rerun.exit_code == 0, rerun.output
    assert f"moved to {out / 'earlier-1'}; this run starts over" in rerun.output
    assert (out / "earlier-1" / "checkpoint.pt").read_bytes() == saved


def test_the_checkpoint_is_replaced_whole_never_written_in_place(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """checkpoint.json was written with write_text: a kill after its truncation left it empty."""
    out = tmp_path / "song"
    own = {out / "checkpoint.json", out / "checkpoint.pt"}
    in_place: list[str] = []
    synced: list[str] = []
    real_open, real_fsync = builtins.open, os.fsync

    def watched_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, str | os.PathLike) and Path(file).absolute() in own and set(mode) & set("wax+"):
            in_place.append(f"{file} ({mode})")
        return real_open(file, mode, *args, **kwargs)

    def watched_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(builtins, "open", watched_open)
    monkeypatch.setattr(io, "open", watched_open)
    monkeypatch.setattr(os, "fsync", watched_fsync)
    result = run(model_dir, out, *PREVIEW)
    assert result.exit_code == 0, result.output
    assert in_place == []
    # the data on disk before its name: a power loss leaves the last checkpoint or the new one
    assert str(out / "checkpoint.tmp") in synced and str(out) in synced
    assert not (out / "checkpoint.tmp").exists()
    assert windows_done(out / "checkpoint.pt") == 3


# ---- a full disk while saving


class _FullDisk:
    """A file that takes half of what is written to it, then fails as a full disk does."""

    def __init__(self, file: Any, path: str) -> None:
        self._file, self._path = file, path

    def write(self, data: Any) -> int:
        self._file.write(bytes(data)[: len(data) // 2])
        self._file.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self._path)

    def __enter__(self) -> _FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def fill_the_disk_after(
    monkeypatch: pytest.MonkeyPatch, out: Path, windows: int, files: str = "checkpoint*"
) -> None:
    """Once `windows` windows are stored, writing the `files` (a pattern) in `out` fails with ENOSPC."""
    real_open = builtins.open
    full = windows == 0

    def open_on_a_full_disk(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        opened = real_open(file, mode, *args, **kwargs)
        if not (full and isinstance(file, str | os.PathLike) and set(mode) & set("wax+")):
            return opened
        path = Path(file).absolute()
        if path.parent.is_relative_to(out) and path.relative_to(out).match(files):
            return _FullDisk(opened, str(file))
        return opened

    def fill(stored: int) -> None:
        nonlocal full
        full = full or stored == windows

    monkeypatch.setattr(builtins, "open", open_on_a_full_disk)
    monkeypatch.setattr(io, "open", open_on_a_full_disk)
    on_each_window(monkeypatch, fill)


def test_a_full_disk_while_saving_keeps_the_last_checkpoint_and_says_how_to_resume(
    model_dir: Path, tmp_path: Path
) -> None:
    """ENOSPC while writing checkpoint.tmp: a raw traceback, and the half-written file left behind."""
    out = tmp_path / "song"
    with pytest.MonkeyPatch.context() as patch:
        fill_the_disk_after(patch, out, 1)
        failed = run(model_dir, out, *PREVIEW)
    error = one_sentence(failed)
    assert f"Cannot save the checkpoint {out / 'checkpoint.pt'} (No space left on device)" in error, error
    assert "the last saved window is kept: run the same command again to resume from it" in error, error
    assert not (out / "checkpoint.tmp").exists()
    assert windows_done(out / "checkpoint.pt") == 1

    resumed = run(model_dir, out, *PREVIEW)
    assert resumed.exit_code == 0, resumed.output
    assert "(1 windows done)" in resumed.output
    assert same_as_a_fresh_run(model_dir, out, tmp_path / "fresh", *PREVIEW)


def test_a_full_disk_before_any_window_is_saved_says_so(model_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "song"
    with pytest.MonkeyPatch.context() as patch:
        fill_the_disk_after(patch, out, 0)
        failed = run(model_dir, out, *PREVIEW)
    error = one_sentence(failed)
    assert f"Cannot save the checkpoint {out / 'checkpoint.pt'} (No space left on device)" in error, error
    assert "no window was saved yet: run the same command again to start over" in error, error
    assert not (out / "checkpoint.tmp").exists() and not (out / "checkpoint.pt").exists()
    assert run(model_dir, out, *PREVIEW).exit_code == 0


def test_a_full_disk_while_writing_a_level_names_the_file_and_the_rerun_writes_it(
    model_dir: Path, tmp_path: Path
) -> None:
    """torch.save of a level's data.pth.tar failed a full disk with `RuntimeError: basic_ios::clear`."""
    out = tmp_path / "song"
    for name in ("data.pth.tar", "item_0.wav"):
        with pytest.MonkeyPatch.context() as patch:
            fill_the_disk_after(patch, out, 0, files=f"level_2/{name}")
            failed = run(model_dir, out, *PREVIEW)
        error = one_sentence(failed)
        assert f"Cannot write {out / 'level_2' / name} (No space left on device)" in error, error
        assert "the last saved window is kept: run the same command again to resume from it" in error
    resumed = run(model_dir, out, *PREVIEW)
    assert resumed.exit_code == 0 and "(3 windows done)" in resumed.output, resumed.output
    assert same_as_a_fresh_run(model_dir, out, tmp_path / "fresh", *PREVIEW)
    assert sorted(path.name for path in (out / "level_2").iterdir()) == sorted(
        path.name for path in (tmp_path / "fresh" / "level_2").iterdir()
    )


# ---- the same run, however its flags are written


@pytest.mark.parametrize(
    "rerun_flags",
    [("--max_batch_size=1",), ("--hop_fraction=0.5",), ("--name=./song",), ("--fp16", "--device=cpu")],
    ids=["smaller-batches", "hop-spelled-once", "name-spelled-otherwise", "fp16"],
)
def test_the_same_run_resumes_with_other_batches_or_spellings(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rerun_flags: tuple[str, ...]
) -> None:
    """A run stopped (out of memory, say) and run again with smaller batches, or its flags written
    otherwise, was set aside and started over (review): the batch sizes, the precision and the
    spellings do not decide its codes, so it resumes."""
    monkeypatch.chdir(tmp_path)
    stopped_after(model_dir, Path("song"), 2, *PREVIEW)
    again = run(model_dir, Path("song"), *PREVIEW, *rerun_flags)
    assert again.exit_code == 0, again.output
    assert "resuming from" in again.output and "earlier-1" not in again.output, again.output


def test_a_run_an_earlier_version_recorded_by_its_flags_resumes(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Earlier versions recorded a run by its flags as spelled (`_flags_fingerprint`): such a run resumes
    with the same flags, and with smaller batches too, its saved state being of this request (review:
    it was set aside); the record is then written as this version writes it."""
    from jukebot.commands import sample as sample_command

    out = tmp_path / "song"
    with pytest.MonkeyPatch.context() as patch:  # the earlier version's record
        patch.setattr(sample_command, "_run_fingerprint", lambda cascade, request: "flags:as-spelled")
        stopped_after(model_dir, out, 1, *PREVIEW)
    assert json.loads((out / "checkpoint.json").read_bytes()) == {"fingerprint": "flags:as-spelled"}
    stopped_after(model_dir, out, 1, *PREVIEW, "--max_batch_size=1")  # resumed, one more window
    assert windows_done(out / "checkpoint.pt") == 2
    assert json.loads((out / "checkpoint.json").read_bytes())["fingerprint"].startswith("request:")
    again = run(model_dir, out, *PREVIEW)
    assert again.exit_code == 0 and "resuming from" in again.output, again.output
    assert not (out / "earlier-1").exists()
    assert same_as_a_fresh_run(model_dir, out, tmp_path / "fresh", *PREVIEW)
