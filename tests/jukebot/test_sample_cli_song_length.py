"""`jukebot sample` and the model's shortest song: a shorter `--total_sample_length_in_seconds` is
refused (as the original refuses it), never raised without a word."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sampler.model_files import model_path, sidecar_path
from tests.jukebot.test_sample_cli import single_thread
from tests.jukebot.test_sample_cli_hardening import one_sentence, run
from tests.tiny_model_dir import write_tiny_model_dir

__all__ = ["single_thread"]  # a fixture shared with the end-to-end tests

pytestmark = pytest.mark.usefixtures("single_thread")

SHORTEST = 0.06  # seconds: longer than the 0.0465 s the tests sample (2048 samples)


@pytest.fixture(scope="module")
def long_songs_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny models whose top prior takes songs of SHORTEST s or more, as 1b_lyrics takes 17.84 s."""
    models = write_tiny_model_dir(tmp_path_factory.mktemp("models"))
    sidecar = sidecar_path(model_path(models, "prior_1b_lyrics"))
    sidecar.write_text(json.dumps(json.loads(sidecar.read_text()) | {"min_duration": SHORTEST}))
    return models


def labels(out: Path) -> dict[str, object]:
    return torch.load(out / "level_2" / "data.pth.tar", weights_only=True)["labels"]


def test_a_total_shorter_than_the_model_takes_is_refused_before_anything_is_written(
    long_songs_only: Path, tmp_path: Path
) -> None:
    """It was raised to the minimum without a word: the timing labels said another song length."""
    out = tmp_path / "out"
    result = run(long_songs_only, out, "--levels=1", "--total_sample_length_in_seconds=0.05")
    assert result.exit_code == 2, result.output
    said = one_sentence(result)
    assert "--total_sample_length_in_seconds" in said
    assert f"1b_lyrics needs a song of at least {SHORTEST:g} s" in said and "got 0.05" in said
    assert not out.exists()


def test_the_shortest_song_itself_is_taken(long_songs_only: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run(long_songs_only, out, "--levels=1", f"--total_sample_length_in_seconds={SHORTEST}")
    assert result.exit_code == 0, result.output
    assert "labelled as" not in result.output
    assert labels(out)["total_length"] == round(SHORTEST * 44100)


def test_a_total_left_out_is_raised_to_the_shortest_song_and_that_is_said(
    long_songs_only: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    result = run(long_songs_only, out, "--levels=1")
    assert result.exit_code == 0, result.output
    assert (
        f"--total_sample_length_in_seconds: labelled as a {SHORTEST:g} s song, the shortest 1b_lyrics "
        "takes (not 0.0465 s); give it to say how long the song is" in result.output
    )
    assert labels(out)["total_length"] == int(SHORTEST * 44100) + 1
