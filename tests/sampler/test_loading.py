"""Loading a cascade from the model directory, and the shapes `jukebot models verify` checks against."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from jukebot.cli import main
from sampler.jukebox.checkpoint import CheckpointMismatch, save_checkpoint
from sampler.jukebox.registry import CHECKPOINTS
from sampler.loading import ModelDirectory, ModelFileUnusable, expected_shapes_for, load_cascade
from sampler.model_files import ModelFilesMissing, model_path
from tests.sampler.jukebox.tiny_priors import tiny_prior
from tests.tiny_model_dir import write_tiny_model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model_dir(tmp_path_factory.mktemp("models"), models=("1b_lyrics",))


def test_published_shapes_have_the_published_key_counts() -> None:
    counts = {name: len(expected_shapes_for(name)) for name in CHECKPOINTS}
    assert counts == {
        "vqvae": 669,
        "upsampler_level_0": 1006,
        "upsampler_level_1": 1006,
        "prior_5b": 872,
        "prior_5b_lyrics": 1194,
        "prior_1b_lyrics": 872,
    }
    assert expected_shapes_for("prior_1b_lyrics")["prior.x_emb.weight"] == (2127, 2048)


def test_cascade_loads_from_the_directory(model_dir: Path) -> None:
    cascade = load_cascade(model_dir, "1b_lyrics")
    assert cascade.hops == (4, 8, 16)
    prior = cascade.priors.acquire(2)
    assert prior.config.single_enc_dec and prior.n_ctx == 64


def test_a_mis_shaped_file_fails_loading_with_the_keys_named(model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "models"
    shutil.copytree(model_dir, broken)
    state = tiny_prior("top_5b").state_dict()  # another kind of prior in the 1b_lyrics slot
    save_checkpoint(state, model_path(broken, "prior_1b_lyrics"))
    with pytest.raises(ModelFileUnusable, match="does not fit the model") as raised:
        ModelDirectory(broken, "1b_lyrics").load_prior(2)
    # the file is named, so that a worker can record the verdict
    assert isinstance(raised.value.__cause__, CheckpointMismatch)
    assert (raised.value.name, raised.value.path) == (
        "prior_1b_lyrics",
        model_path(broken, "prior_1b_lyrics"),
    )
    with pytest.raises(ModelFilesMissing, match="jukebot models download 5b"):
        load_cascade(broken, "5b")


def test_models_verify_checks_keys_and_shapes(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "models"
    shutil.copytree(model_dir, work)
    monkeypatch.setenv("JUKEBOT_MODEL_DIR", str(work))
    ok = CliRunner().invoke(main, ["models", "verify", "1b_lyrics"])
    assert ok.exit_code == 0, ok.output
    assert "4 file(s) OK." in ok.output
    state = tiny_prior("top_1b_lyrics").state_dict()
    state["prior.x_out.weight"] = torch.zeros(3, 3)
    save_checkpoint(state, model_path(work, "prior_1b_lyrics"))
    bad = CliRunner().invoke(main, ["models", "verify", "1b_lyrics"])
    assert bad.exit_code == 1
    assert "prior_1b_lyrics" in bad.output and "prior.x_out.weight" in bad.output
