"""A malformed VQ-VAE sidecar (`5b/vqvae.pth.tar.hparams.json`) as an operator meets it: `models list`,
`models verify`, `models download` and the doctor agree that the model cannot be used, say so once,
against that sidecar, with the advice that fixes it; no checkpoint is called damaged or moved aside for
it. And `models import` of a folder that yields nothing, or whose files are not files, is an error that
says why."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from jukebot.cli import main
from jukebot.doctor import Verdict, check_models
from jukebot.settings import load_settings
from sampler.jukebox.registry import MODELS
from sampler.loading import (
    ModelDirectory,
    ModelFileUnusable,
    expected_shapes_for,
    record_unusable,
    sidecar_path,
)
from sampler.model_files import SIDECAR_FIX, CheckpointVerifier, model_path
from tests.tiny_model_dir import write_tiny_model_dir

PRIORS = MODELS["1b_lyrics"].priors


def models(model_dir: Path, *args: str) -> Result:
    """`jukebot models …` as an operator runs it: the real verifier, settings from the environment."""
    return CliRunner().invoke(
        main, ["models", *args], env={"JUKEBOT_MODEL_DIR": str(model_dir), "JUKEBOT_MODEL_MIRRORS": ""}
    )


def checkpoints(model_dir: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in sorted(model_dir.rglob("*.pth.tar"))}


@pytest.fixture(params=["{", "[]", '{"levels": 3}'], ids=["bad json", "an array", "lacks keys"])
def broken(request: pytest.FixtureRequest, clean_env: Path) -> tuple[Path, Path]:
    model_dir = write_tiny_model_dir(clean_env / "models")
    sidecar = sidecar_path(model_path(model_dir, "vqvae"))
    sidecar.write_text(request.param)
    return model_dir, sidecar


def test_verify_blames_the_vqvae_sidecar_once_and_moves_nothing(broken: tuple[Path, Path]) -> None:
    model_dir, sidecar = broken
    before = checkpoints(model_dir)
    result = models(model_dir, "verify")
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    bad = [line for line in lines if line.startswith("BAD")]
    assert len(bad) == 1 and bad[0].startswith(f"BAD vqvae: {model_path(model_dir, 'vqvae')}: "), lines
    assert str(sidecar) in bad[0] or "its .hparams.json sidecar" in bad[0], bad[0]
    assert bad[0].endswith(f"{SIDECAR_FIX}. The checkpoint itself was left in place.")
    for name in PRIORS:  # not checked, not blamed: their shapes depend on that sidecar
        line = next(line for line in lines if f" {name}: " in line)
        assert line.startswith(f"NOT CHECKED {name}: ") and "(see vqvae)" in line, line
        assert "download" not in line
    assert "Error: 1 problem(s) found" in result.output
    assert checkpoints(model_dir) == before and not list(model_dir.rglob("*.corrupt"))


def test_verify_of_a_prior_alone_says_what_is_wrong_with_the_vqvae_sidecar(broken: tuple[Path, Path]) -> None:
    model_dir, _ = broken
    before = checkpoints(model_dir)
    result = models(model_dir, "verify", "prior_1b_lyrics")
    assert result.exit_code == 1, result.output
    line = next(line for line in result.output.splitlines() if "prior_1b_lyrics" in line)
    assert line.startswith("NOT CHECKED prior_1b_lyrics: ") and "VQ-VAE's sidecar" in line, line
    assert SIDECAR_FIX in line and "download" not in line
    assert checkpoints(model_dir) == before and not list(model_dir.rglob("*.corrupt"))


@pytest.mark.parametrize("content", ["{", "[]"])
def test_list_download_and_doctor_agree_with_verify(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, content: str
) -> None:
    model_dir = write_tiny_model_dir(clean_env / "models")
    sidecar = sidecar_path(model_path(model_dir, "vqvae"))
    sidecar.write_text(content)
    listed = models(model_dir, "list")
    assert listed.exit_code == 0, listed.output
    heading = next(line for line in listed.output.splitlines() if line.startswith("1b_lyrics (lyrics): "))
    assert "ready" not in heading and str(sidecar) in heading and heading.find(SIDECAR_FIX) > 0, heading
    advice = heading.replace(str(sidecar), "SIDECAR")
    assert "to fetch" not in advice and "download" not in advice

    downloaded = models(model_dir, "download", "1b_lyrics", "--no-progress")
    assert (
        f"vqvae: already present, but {'cannot read ' if content == '{' else ''}{sidecar}"
        in downloaded.output
    )
    assert "not verified" not in downloaded.output

    monkeypatch.setenv("JUKEBOT_MODEL_DIR", str(model_dir))
    verifier = CheckpointVerifier(expected_shapes_for=lambda name: expected_shapes_for(name, model_dir))
    checks = {check.message.split(":")[0]: check for check in check_models(load_settings(), verifier)}
    check = checks["1b_lyrics"]
    assert check.verdict is Verdict.WARN
    assert check.message.startswith("1b_lyrics: vqvae: ") and str(sidecar) in check.message
    assert check.message.count(str(sidecar)) == 1 and "models verify" not in check.message


@pytest.mark.usefixtures("clean_env")
def test_import_of_an_hf_folder_that_names_no_weights_fails(tmp_path: Path) -> None:
    source = tmp_path / "hf"
    source.mkdir()
    (source / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {}}))
    (source / "pytorch_model-00001-of-00001.bin").write_bytes(os.urandom(4096))
    model_dir = tmp_path / "models"
    result = models(model_dir, "import", str(source))
    assert result.exit_code == 1, result.output
    assert f"Error: Nothing in {source} could be imported: " in result.output
    assert "weight_map is empty" in result.output and "Models ready" not in result.output


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("fifo", "is a FIFO (named pipe), not a checkpoint file"),
        ("folder", "is a folder, not a checkpoint file"),
        ("broken link", "is a broken symbolic link"),
    ],
)
def test_import_names_what_a_path_that_is_not_a_file_is(tmp_path: Path, kind: str, said: str) -> None:
    source = tmp_path / "source"
    source.mkdir()
    path = source / "vqvae.pth.tar"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        path.symlink_to(tmp_path / "gone.pth.tar")
    result = models(tmp_path / "models", "import", str(source))
    assert result.exit_code == 1, result.output
    assert f"{path} {said}" in result.output
    assert "does not exist;" not in result.output and "jukebot models download" not in result.output


@pytest.mark.usefixtures("clean_env")
def test_a_link_loop_in_the_model_directory_is_said_to_be_one(tmp_path: Path) -> None:
    model_dir = write_tiny_model_dir(tmp_path / "models")
    vqvae = model_path(model_dir, "vqvae")
    vqvae.unlink()
    vqvae.symlink_to(vqvae.name)  # points at itself
    for args in (["list"], ["verify", "vqvae"]):
        result = models(model_dir, *args)
        assert f"{vqvae} is a symbolic link loop" in result.output, result.output
        assert "permission" not in result.output


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("missing", "does not exist."),
        (
            "broken link",
            "is a broken link (to GONE, which does not exist): give a checkpoint file, or a folder of them.",
        ),
        ("link loop", "is a loop of links: give a checkpoint file, or a folder of them."),
        ("fifo", "is a FIFO (named pipe): give a checkpoint file, or a folder of them."),
    ],
)
def test_import_names_what_the_path_given_is_when_it_is_no_file(tmp_path: Path, kind: str, said: str) -> None:
    """The PATH argument itself, not only a file in a folder: click's own check said "does not exist"
    of a broken link or a loop, and a FIFO was read as a Hugging Face copy."""
    path, gone = tmp_path / "vqvae.pth.tar", tmp_path / "gone.pth.tar"
    if kind == "broken link":
        path.symlink_to(gone)
    elif kind == "link loop":
        path.symlink_to(path)
    elif kind == "fifo":
        os.mkfifo(path)
    result = models(tmp_path / "models", "import", str(path))
    assert (result.exit_code, result.output) == (1, f"Error: {path} {said.replace('GONE', str(gone))}\n")


@pytest.mark.parametrize("found_by", ["verify", "sampling"])
def test_a_sidecar_found_wrong_stays_wrong_in_the_list_until_it_changes(
    clean_env: Path, found_by: str
) -> None:
    """A sidecar that reads as JSON but holds a wrong value ("n_ctx": "64") is judged only against the
    architecture, which `models list` does not do (that takes torch): `verify` and `doctor` called it
    wrong while the list still said "ready", and after `sample` found it, "1 of 4 files to fetch". The
    verdict is kept as the sidecar's, until the sidecar changes."""
    model_dir = write_tiny_model_dir(clean_env / "models", models=("1b_lyrics",))
    prior = model_path(model_dir, "prior_1b_lyrics")
    sidecar = sidecar_path(prior)
    good = sidecar.read_text()
    hparams = json.loads(good)
    sidecar.write_text(json.dumps(hparams | {"n_ctx": str(hparams["n_ctx"])}))
    if found_by == "verify":
        assert models(model_dir, "verify", "prior_1b_lyrics").exit_code == 1
    else:
        try:
            ModelDirectory(model_dir, "1b_lyrics").prior_config(2)
        except ModelFileUnusable as exc:
            record_unusable(model_dir, exc)
        else:
            raise AssertionError("a prior whose sidecar is wrong loaded")

    listed = models(model_dir, "list")
    heading = next(line for line in listed.output.splitlines() if line.startswith("1b_lyrics (lyrics): "))
    assert heading.startswith(f"1b_lyrics (lyrics): prior_1b_lyrics: {sidecar} "), heading
    assert "must be a whole number" in heading and SIDECAR_FIX in heading, heading
    assert "ready" not in heading and "to fetch" not in heading, heading
    downloaded = models(model_dir, "download", "1b_lyrics", "--no-progress")
    assert f"prior_1b_lyrics: already present, but {sidecar} " in downloaded.output, downloaded.output
    assert not list(model_dir.rglob("*.corrupt"))

    sidecar.write_text(good)  # fixed: the verdict no longer holds
    listed = models(model_dir, "list")
    assert "1b_lyrics (lyrics): ready" in listed.output, listed.output
