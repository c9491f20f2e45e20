"""`jukebot sample` checks the priors it will use before writing anything, and says in one sentence
which model file cannot be used, at the start or mid-run."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from sampler.jukebox.cascade import Cascade
from sampler.model_files import model_path
from tests.jukebot.test_sample_cli import single_thread
from tests.jukebot.test_sample_cli_hardening import one_sentence, run
from tests.tiny_model_dir import write_tiny_model_dir

__all__ = ["single_thread"]  # a fixture shared with the end-to-end tests

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def own_models(tmp_path: Path) -> Path:
    """A model directory of this test's own: the tests damage its files."""
    return write_tiny_model_dir(tmp_path / "models", models=("1b_lyrics", "5b_lyrics"))


def cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def swapped(models: Path) -> None:
    """Another model's top prior under 1b_lyrics' name (its sidecar kept): other shapes."""
    shutil.copyfile(model_path(models, "prior_5b_lyrics"), model_path(models, "prior_1b_lyrics"))


def top_cut_short(models: Path) -> None:
    cut_short(model_path(models, "prior_1b_lyrics"))


def top_empty(models: Path) -> None:
    model_path(models, "prior_1b_lyrics").write_bytes(b"")


def level_0_cut_short(models: Path) -> None:
    """Used only after the top level is sampled (hours, on the real models)."""
    cut_short(model_path(models, "upsampler_level_0"))


@pytest.mark.parametrize(
    ("damage", "name"),
    [
        (swapped, "prior_1b_lyrics"),
        (top_cut_short, "prior_1b_lyrics"),
        (top_empty, "prior_1b_lyrics"),
        (level_0_cut_short, "upsampler_level_0"),
    ],
)
def test_a_prior_that_cannot_be_used_is_refused_before_anything_is_written(
    own_models: Path, tmp_path: Path, damage: Any, name: str
) -> None:
    damage(own_models)
    out = tmp_path / "out"
    result = run(own_models, out, "--levels=3")
    assert result.exit_code == 1, result.output
    said = one_sentence(result)
    assert f"the {name} file of 1b_lyrics" in said and "cannot be used: " in said
    assert str(model_path(own_models, name)) in said
    assert "Run `jukebot models verify 1b_lyrics`" in said
    assert not out.exists()
    again = run(own_models, out, "--levels=3")  # the verdict is remembered: the same sentence
    assert one_sentence(again) == said and not out.exists()


def test_a_prior_damaged_mid_run_is_said_in_one_sentence_and_the_windows_are_kept(
    own_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    level_0 = model_path(own_models, "upsampler_level_0")
    good = level_0.read_bytes()
    real_sample = Cascade.sample

    def damaged_after_one_window(self: Cascade, request: Any, state: Any = None, **kwargs: Any) -> Any:
        def on_window(current: Any) -> None:
            kwargs["on_window"](current)
            if level_0.read_bytes() == good:
                cut_short(level_0)  # after the check, before level 0 loads

        return real_sample(self, request, state, **(kwargs | {"on_window": on_window}))

    out = tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(Cascade, "sample", damaged_after_one_window)
        result = run(own_models, out, "--levels=3")
    assert result.exit_code == 1, result.output
    said = one_sentence(result)
    assert "the upsampler_level_0 file of 1b_lyrics" in said and f"{level_0}: the file is truncated" in said
    assert "Run `jukebot models verify 1b_lyrics`" in said
    assert f"The finished windows are saved in {out / 'checkpoint.pt'}: run the same command" in said
    assert (out / "level_2" / "item_0.wav").is_file()  # the top level was done: it is kept

    level_0.write_bytes(good)
    resumed = run(own_models, out, "--levels=3")
    assert resumed.exit_code == 0 and "resuming from" in resumed.output, resumed.output
    assert (out / "level_0" / "item_0.wav").is_file()
