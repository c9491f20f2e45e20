"""`jukebot sample` resumes only on the same inputs: a codes file or prompt made again is another run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sampler.jukebox.cascade import Cascade
from tests.jukebot.test_sample_cli import codes, model_dir, single_thread
from tests.jukebot.test_sample_cli_hardening import run
from tests.jukebot.test_sample_cli_unused_flags import clip

__all__ = ["model_dir", "single_thread"]  # fixtures shared with the end-to-end tests

pytestmark = pytest.mark.usefixtures("single_thread")


def stop_after_one_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """The next runs stop as Ctrl-C stops them, right after their first stored window."""
    real_sample = Cascade.sample

    def interrupted(self: Cascade, request: Any, state: Any = None, **kwargs: Any) -> Any:
        def on_window(current: Any) -> None:
            kwargs["on_window"](current)
            raise KeyboardInterrupt

        return real_sample(self, request, state, **(kwargs | {"on_window": on_window}))

    monkeypatch.setattr(Cascade, "sample", interrupted)


def test_an_upsample_of_a_preview_made_again_starts_over(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The preview made again with another seed, into the same NAME: the interrupted upsample of the
    old one resumed on the new codes file and built the new song's lower levels on the old top level."""
    preview, up = tmp_path / "A", tmp_path / "B"
    top = preview / "level_2" / "data.pth.tar"
    assert run(model_dir, preview, "--levels=1", "--n_samples=1", "--seed=1").exit_code == 0
    upsample = ["--mode=upsample", f"--codes_file={top}"]
    with monkeypatch.context() as patch:
        stop_after_one_window(patch)
        stopped = run(model_dir, up, *upsample)
    assert stopped.exit_code == 130, stopped.output

    again = run(model_dir, preview, "--levels=1", "--n_samples=1", "--seed=2")
    assert again.exit_code == 0 and (preview / "earlier-1" / "level_2").is_dir(), again.output
    new_top = codes(top)[2]
    assert not new_top.equal(codes(preview / "earlier-1" / "level_2" / "data.pth.tar")[2])

    rerun = run(model_dir, up, *upsample)
    assert rerun.exit_code == 0, rerun.output
    assert "resuming from" not in rerun.output
    assert f"{up} held the output of a run with other flags: moved to {up / 'earlier-1'}" in rerun.output
    ours = codes(up / "level_0" / "data.pth.tar")
    assert ours[2].equal(new_top)
    fresh = run(model_dir, tmp_path / "fresh", *upsample)  # what the new codes make, never interrupted
    assert fresh.exit_code == 0, fresh.output
    theirs = codes(tmp_path / "fresh" / "level_0" / "data.pth.tar")
    assert all(a.equal(b) for a, b in zip(ours, theirs, strict=True))

    same = run(model_dir, up, *upsample)  # nothing changed: the same run, resumed
    assert same.exit_code == 0 and "resuming from" in same.output and "moved to" not in same.output


def test_a_prompt_replaced_in_place_makes_another_run(model_dir: Path, tmp_path: Path) -> None:
    prompt = clip(tmp_path / "prompt.wav", seed=1)
    out = tmp_path / "primed"
    primed = ["--mode=primed", f"--audio_file={prompt}", "--prompt_length_in_seconds=0.012", "--levels=1"]
    first = run(model_dir, out, *primed)
    assert first.exit_code == 0, first.output
    before = codes(out / "level_2" / "data.pth.tar")[2]
    same = run(model_dir, out, *primed)  # the same file, read again: the same run
    assert same.exit_code == 0 and "resuming from" in same.output and "moved to" not in same.output

    clip(prompt, seed=2)  # another recording under the same name
    replaced = run(model_dir, out, *primed)
    assert replaced.exit_code == 0, replaced.output
    assert "resuming from" not in replaced.output and f"moved to {out / 'earlier-1'}" in replaced.output
    assert codes(out / "earlier-1" / "level_2" / "data.pth.tar")[2].equal(before)
    fresh_prompt = clip(tmp_path / "fresh.wav", seed=2)
    fresh = run(model_dir, tmp_path / "fresh", *primed, f"--audio_file={fresh_prompt}")
    assert fresh.exit_code == 0, fresh.output
    ours = codes(out / "level_2" / "data.pth.tar")[2]
    assert ours.equal(codes(tmp_path / "fresh" / "level_2" / "data.pth.tar")[2])
    assert not ours[:, :32].equal(before[:, :32])  # the new prompt's codes


def test_output_no_record_says_which_run_wrote_is_moved_aside_not_overwritten(
    model_dir: Path, tmp_path: Path
) -> None:
    """The original Jukebox's output folder, or a run's whose checkpoint files were removed: its items
    were overwritten by the new run's and the rest left beside them, one folder mixing two runs."""
    out = tmp_path / "song"
    assert run(model_dir, out, "--levels=3", "--n_samples=2", "--seed=1").exit_code == 0
    (out / "checkpoint.pt").unlink()
    (out / "checkpoint.json").unlink()
    before = {path.relative_to(out): path.read_bytes() for path in out.rglob("*") if path.is_file()}
    del before[Path(".lock")]  # the lock file stays: the next run holds it
    again = run(model_dir, out, "--levels=1", "--n_samples=1", "--seed=99")
    assert again.exit_code == 0, again.output
    assert (
        f"{out} held {out / 'level_2'} with no checkpoint.json saying which run wrote it (another program's, "
        f"or a run whose record was removed): moved to {out / 'earlier-1'}; this run starts over"
    ) in again.output
    earlier = out / "earlier-1"
    assert {
        path.relative_to(earlier): path.read_bytes() for path in earlier.rglob("*") if path.is_file()
    } == before
    assert sorted(path.name for path in (out / "level_2").iterdir()) == [
        "data.pth.tar",
        "item_0.ogg",
        "item_0.wav",
    ]
    assert not (out / "level_1").exists() and not (out / "level_0").exists()


def test_an_upsample_into_the_folder_its_codes_file_is_in_keeps_that_folder(
    model_dir: Path, tmp_path: Path
) -> None:
    """Only the level folder holding the codes file: nothing else to set aside."""
    out = tmp_path / "song"
    assert run(model_dir, out, "--levels=1", "--n_samples=1", "--seed=1").exit_code == 0
    (out / "checkpoint.pt").unlink()
    (out / "checkpoint.json").unlink()
    up = run(model_dir, out, "--mode=upsample", f"--codes_file={out / 'level_2' / 'data.pth.tar'}")
    assert up.exit_code == 0 and "moved to" not in up.output, up.output
    assert (out / "level_0" / "item_0.wav").is_file() and not (out / "earlier-1").exists()
