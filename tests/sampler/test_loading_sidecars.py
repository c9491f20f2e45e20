"""A `.hparams.json` sidecar whose values are of the wrong type (`"n_ctx": "64"`, a string where a
whole number belongs) is said as such, naming the sidecar, the hparam and the fix: by the loader
(ModelFileUnusable, the sidecar known to be what is wrong), by `jukebot models verify` and by
`jukebot sample`, in one line each, never a TypeError's traceback from deep inside the model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from jukebot.cli import main
from sampler.jukebox.checkpoint import CheckpointError
from sampler.jukebox.prior import PriorConfig, PriorConfigError
from sampler.jukebox.registry import PRIOR_HPARAMS
from sampler.loading import ModelDirectory, ModelFileUnusable, expected_shapes_for, load_cascade, sidecar_path
from sampler.model_files import SIDECAR_FIX, model_path
from tests.jukebot.test_sample_cli import single_thread
from tests.jukebot.test_sample_cli_hardening import one_sentence, run
from tests.tiny_model_dir import write_tiny_model_dir

__all__ = ["single_thread"]

# (whose sidecar, the hparam, its wrong value, what is said of it)
WRONG = [
    ("prior_1b_lyrics", "n_ctx", "64", "prior hparam 'n_ctx' must be a whole number, not the string '64'"),
    ("upsampler_level_0", "cond_depth", 2.5, "prior hparam 'cond_depth' must be a whole number, not 2.5"),
    ("upsampler_level_1", "y_bins", [1, "x"], "prior hparam 'y_bins' must be an array of whole numbers"),
    ("vqvae", "width", "16", "VQ-VAE hparam 'width' must be a whole number, not the string '16'"),
    ("vqvae", "downs_t", "211", "VQ-VAE hparam 'downs_t' must be an array of whole numbers"),
]
IDS = ["top n_ctx a string", "up0 cond_depth 2.5", "up1 y_bins", "vqvae width a string", "vqvae downs_t"]


def set_hparam(model_dir: Path, name: str, key: str, value: Any) -> Path:
    sidecar = sidecar_path(model_path(model_dir, name))
    sidecar.write_text(json.dumps(json.loads(sidecar.read_text()) | {key: value}))
    return sidecar


@pytest.fixture
def own_models(tmp_path: Path) -> Path:
    return write_tiny_model_dir(tmp_path / "models", models=("1b_lyrics",))


@pytest.mark.parametrize(("name", "key", "value", "said"), WRONG, ids=IDS)
def test_the_loader_names_the_sidecar_and_the_hparam(
    own_models: Path, name: str, key: str, value: Any, said: str
) -> None:
    sidecar = set_hparam(own_models, name, key, value)
    with pytest.raises(ModelFileUnusable) as raised:
        load_cascade(own_models, "1b_lyrics")
    assert raised.value.name == name and raised.value.sidecar == sidecar
    assert str(sidecar) in raised.value.detail and said in raised.value.detail
    assert raised.value.detail.endswith(SIDECAR_FIX)
    # what `models verify` checks against: the same words
    with pytest.raises(CheckpointError) as checked:  # `models verify` says it as a sidecar's problem
        expected_shapes_for(name, own_models)
    assert str(sidecar) in str(checked.value) and said in str(checked.value)


@pytest.mark.parametrize(("name", "key", "value", "said"), WRONG, ids=IDS)
def test_models_verify_says_it_once_against_the_sidecar(
    own_models: Path, name: str, key: str, value: Any, said: str
) -> None:
    sidecar = set_hparam(own_models, name, key, value)
    result = CliRunner().invoke(
        main, ["models", "verify"], env={"JUKEBOT_MODEL_DIR": str(own_models), "JUKEBOT_MODEL_MIRRORS": ""}
    )
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    bad = [line for line in result.output.splitlines() if line.startswith("BAD")]
    assert len(bad) == 1 and bad[0].startswith(f"BAD {name}: "), result.output
    assert str(sidecar) in bad[0] and said in bad[0] and SIDECAR_FIX in bad[0], bad[0]
    assert "left in place" in bad[0] and not list(own_models.rglob("*.corrupt"))


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize(("name", "key", "value", "said"), WRONG[::3], ids=IDS[::3])
def test_sample_says_it_in_one_sentence(
    own_models: Path, tmp_path: Path, name: str, key: str, value: Any, said: str
) -> None:
    sidecar = set_hparam(own_models, name, key, value)
    out = tmp_path / "out"
    result = run(own_models, out, "--levels=3")  # an exception would be raised here, not caught
    sentence = one_sentence(result)
    assert str(sidecar) in sentence and said in sentence and SIDECAR_FIX in sentence, sentence
    assert "models download" not in sentence
    assert not out.exists()


def test_a_prior_on_a_vqvae_sidecar_it_cannot_be_built_on_blames_that_sidecar(own_models: Path) -> None:
    """The prior has the published architecture (no sidecar), the VQ-VAE's sidecar says 2 levels: the
    top prior (level 2) cannot be built on it: the VQ-VAE's sidecar is what is wrong."""
    vqvae_sidecar = set_hparam(own_models, "vqvae", "levels", 2)
    set_hparam(own_models, "vqvae", "downs_t", [2, 1])
    set_hparam(own_models, "vqvae", "strides_t", [2, 2])
    set_hparam(own_models, "vqvae", "hvqvae_multipliers", [2, 1])
    sidecar_path(model_path(own_models, "prior_1b_lyrics")).unlink()
    directory = ModelDirectory(own_models, "1b_lyrics")
    with pytest.raises(ModelFileUnusable) as raised:
        directory.prior_config(2)
    assert raised.value.name == "vqvae" and raised.value.sidecar == vqvae_sidecar
    assert str(vqvae_sidecar) in raised.value.detail and SIDECAR_FIX in raised.value.detail


def test_published_hparams_are_all_of_the_right_types() -> None:
    for name in PRIOR_HPARAMS:
        PriorConfig.published(name)
    with pytest.raises(PriorConfigError, match="'heads' must be a whole number, not true"):
        PriorConfig.from_hparams(PRIOR_HPARAMS["prior_1b_lyrics"] | {"heads": True})
