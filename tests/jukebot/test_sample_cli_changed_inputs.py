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
