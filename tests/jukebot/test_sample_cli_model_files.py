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


def test_weights_that_are_not_numbers_stay_failed_until_verify_moves_the_file_aside(
    own_models: Path, tmp_path: Path, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`verify` reads keys and shapes only, so it cannot see NaN weights. Its pass used to replace the
    verdict sampling recorded: the advice (verify moves it aside, then download) led nowhere."""
    from click.testing import CliRunner

    from jukebot.cli import main
    from sampler.jukebox.checkpoint import save_checkpoint
    from sampler.model_files import model_status
    from tests.sampler.jukebox.tiny_priors import tiny_prior

    level_0 = model_path(own_models, "upsampler_level_0")
    good = level_0.read_bytes()
    poisoned = tiny_prior("up0", seed=7).state_dict()
    first = next(key for key, value in poisoned.items() if value.is_floating_point())
    poisoned[first] = poisoned[first].clone().fill_(float("nan"))
    save_checkpoint(poisoned, level_0)  # keys and shapes as they must be

    out = tmp_path / "out"
    said = one_sentence(run(own_models, out, "--levels=3"))
    assert f"holds weights that are not numbers (NaN or infinite values, first in {first})" in said
    assert "Run `jukebot models verify 1b_lyrics` (it moves a bad file aside)" in said
    status = model_status(own_models)["1b_lyrics"]  # recorded
    assert status.summary == "1 of 4 files to fetch: jukebot models verify 1b_lyrics"
    (failed,) = [file for file in status.files if file.state == "failed"]
    assert failed.name == "upsampler_level_0" and "not numbers" in failed.state_description
    again = one_sentence(run(own_models, tmp_path / "again", "--levels=3"))  # refused before sampling
    assert "not numbers" in again and not (tmp_path / "again").exists()

    monkeypatch.setenv("JUKEBOT_MODEL_DIR", str(own_models))
    verified = CliRunner().invoke(main, ["models", "verify", "1b_lyrics"])
    assert verified.exit_code == 1, verified.output
    assert f"BAD upsampler_level_0: {level_0}: " in verified.output and "not numbers" in verified.output
    assert f"moved aside to {level_0}.corrupt" in verified.output
    assert not level_0.exists()
    assert (
        model_status(own_models)["1b_lyrics"].summary
        == "1 of 4 files to fetch: jukebot models download 1b_lyrics"
    )

    level_0.write_bytes(good)  # what `jukebot models download 1b_lyrics` fetches
    assert CliRunner().invoke(main, ["models", "verify", "1b_lyrics"]).exit_code == 0
    resumed = run(own_models, out, "--levels=3")
    assert resumed.exit_code == 0 and (out / "level_0" / "item_0.wav").is_file(), resumed.output
