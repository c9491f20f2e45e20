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


def test_a_file_with_weights_that_are_not_numbers_fails_loading(model_dir: Path, tmp_path: Path) -> None:
    """A damaged file of the right keys and shapes sampled all-zero codes (argmax of NaN logits), or
    crashed mid-job with an IndexError."""
    broken = tmp_path / "models"
    shutil.copytree(model_dir, broken)
    path = model_path(broken, "prior_1b_lyrics")
    state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    key = next(key for key, value in state.items() if value.is_floating_point() and value.ndim == 2)
    state[key][0, 0] = float("nan")
    save_checkpoint(state, path)
    with pytest.raises(
        ModelFileUnusable, match=r"NaN or infinite values, first in .*: the file is damaged"
    ) as e:
        ModelDirectory(broken, "1b_lyrics").load_prior(2)
    assert "re-download it with `jukebot models download 1b_lyrics`" in str(e.value)  # not `<model>`


def test_a_weight_too_large_for_half_precision_fails_loading_saying_so(
    model_dir: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "models"
    shutil.copytree(model_dir, broken)
    path = model_path(broken, "prior_1b_lyrics")
    state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    halved = ModelDirectory(broken, "1b_lyrics").prior_on_meta(2, torch.float16).state_dict()
    key = next(key for key, value in halved.items() if value.dtype == torch.float16 and value.ndim == 2)
    state[key][0, 0] = 1e6  # past float16's largest, 65504
    save_checkpoint(state, path)
    ModelDirectory(broken, "1b_lyrics").load_prior(2)  # in float32, as the CPU samples
    with pytest.raises(ModelFileUnusable, match=r"too large for torch.float16 .*load the model in float32"):
        load_cascade(broken, "1b_lyrics", dtype=torch.float16).priors.acquire(2)


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


def test_loaded_weights_do_not_follow_the_file_rewritten_in_place(tmp_path: Path) -> None:
    """On the CPU, weights whose dtype the file already had stayed memory-mapped to it: a copy written
    over the file in place changed a running worker's model, and a file cut short killed it (SIGBUS)."""
    models = write_tiny_model_dir(tmp_path / "a", models=("5b",))
    other = write_tiny_model_dir(tmp_path / "b", models=("5b",), seed=99)  # the same shapes
    cascade = load_cascade(models, "5b")
    prior = cascade.priors.acquire(2)
    before = [p.detach().clone() for p in (*prior.parameters(), *cascade.vqvae.parameters())]
    for name in ("prior_5b", "vqvae"):
        shutil.copyfile(model_path(other, name), model_path(models, name))  # as `cp` does: in place
    after = [p.detach() for p in (*prior.parameters(), *cascade.vqvae.parameters())]
    assert all(torch.equal(old, new) for old, new in zip(before, after, strict=True))
