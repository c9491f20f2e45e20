"""`jukebot models import`: Hugging Face copies and stray .pth.tar files into the model directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from jukebot.cli import main
from sampler.jukebox.checkpoint import PRIOR_PARTS, VQVAE_PART, original_key_to_hf, read_checkpoint
from sampler.jukebox.registry import MODELS
from sampler.loading import load_cascade
from sampler.model_files import file_status, model_path
from tests.tiny_model_dir import write_tiny_model_dir


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight 1b_lyrics in the original layout, with its sidecars."""
    return write_tiny_model_dir(tmp_path_factory.mktemp("originals"), models=("1b_lyrics",))


def _parts(originals: Path) -> dict[str, str]:
    names = MODELS["1b_lyrics"]
    return {VQVAE_PART: names.vqvae, **dict(zip(PRIOR_PARTS, names.priors, strict=True))}


def write_hf_copy(originals: Path, root: Path, shards: int = 3) -> Path:
    """The model as Hugging Face publishes it: one JukeboxModel state dict, renamed keys, fp32, sharded."""
    merged = {}
    for part, name in _parts(originals).items():
        for key, value in read_checkpoint(model_path(originals, name)).items():
            merged[original_key_to_hf(part, key)] = value.float()
    keys = sorted(merged)
    root.mkdir(parents=True)
    for i in range(shards):
        chunk = {key: merged[key] for key in keys[i::shards]}
        torch.save(chunk, root / f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin")
    (root / "config.json").write_text("{}")
    return root


def empty_model_dir(originals: Path, target: Path) -> Path:
    """The sidecars alone (the tiny architecture), as before any weights are there."""
    for sidecar in originals.rglob("*.hparams.json"):
        destination = target / sidecar.relative_to(originals)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sidecar, destination)
    return target


def jukebot(model_dir: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["models", *args], env={"JUKEBOT_MODEL_DIR": str(model_dir)})


def test_a_hugging_face_copy_is_imported_in_the_original_format(originals: Path, tmp_path: Path) -> None:
    hf = write_hf_copy(originals, tmp_path / "jukebox-1b-lyrics")
    model_dir = empty_model_dir(originals, tmp_path / "models")
    result = jukebot(model_dir, "import", str(hf))
    assert result.exit_code == 0, result.output
    assert "prior_1b_lyrics: imported and verified" in result.output
    assert f"Models ready in {model_dir}: 1b_lyrics." in result.output
    for name in _parts(originals).values():
        mine, theirs = (
            read_checkpoint(model_path(model_dir, name)),
            read_checkpoint(model_path(originals, name)),
        )
        assert mine.keys() == theirs.keys()  # original key names again
        assert all(torch.equal(mine[key], theirs[key].float()) for key in theirs)
        assert torch.load(model_path(model_dir, name), weights_only=True).keys() == {"model"}
        assert file_status(name, model_dir).state == "verified"
    assert "1b_lyrics (lyrics): ready" in jukebot(model_dir, "list").output
    assert load_cascade(model_dir, "1b_lyrics").hops == (4, 8, 16)

    again = jukebot(model_dir, "import", str(hf))
    assert again.exit_code == 0 and again.output.count("already there; kept (--replace overwrites it)") == 4


def test_original_files_from_elsewhere_are_named_by_path_or_told(originals: Path, tmp_path: Path) -> None:
    model_dir = empty_model_dir(originals, tmp_path / "models")
    downloads = tmp_path / "downloads"
    shutil.copytree(originals, downloads, ignore=shutil.ignore_patterns("*.json"))
    by_path = jukebot(model_dir, "import", str(downloads))
    assert by_path.exit_code == 0, by_path.output
    assert by_path.output.count("imported and verified") == 4
    assert "Models ready in" in by_path.output and ": 1b_lyrics." in by_path.output

    stray = tmp_path / "my-upsampler.pth.tar"  # a name that says nothing; level 0 and 1 look alike
    shutil.copyfile(model_path(originals, "upsampler_level_1"), stray)
    ambiguous = jukebot(model_dir, "import", str(stray), "--replace")
    assert ambiguous.exit_code == 1
    assert "could be any of upsampler_level_0, upsampler_level_1" in ambiguous.output
    assert "say which with --name" in ambiguous.output
    told = jukebot(model_dir, "import", str(stray), "--name", "upsampler_level_1", "--replace")
    assert told.exit_code == 0 and "upsampler_level_1: imported and verified" in told.output


def test_a_part_that_does_not_fit_imports_nothing(originals: Path, tmp_path: Path) -> None:
    hf = write_hf_copy(originals, tmp_path / "hf", shards=1)
    shard = hf / "pytorch_model-00001-of-00001.bin"
    state = torch.load(shard, weights_only=True)
    key = next(k for k in state if k.startswith("priors.0.") and state[k].dim() == 2)
    state[key] = torch.zeros(3, 3)
    torch.save(state, shard)
    model_dir = empty_model_dir(originals, tmp_path / "models")
    result = jukebot(model_dir, "import", str(hf), "--model", "1b_lyrics")
    assert result.exit_code == 1
    assert "does not fit the model" in result.output and "Nothing was imported." in result.output
    assert not list(model_dir.rglob("*.pth.tar"))
