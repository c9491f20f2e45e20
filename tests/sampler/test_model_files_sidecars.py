"""The VQ-VAE's sidecar, which every prior's shapes depend on: one that is malformed makes the files that
depend on it unusable (the model is not served, `file_status` says why), and verifying them never calls
them damaged or moves them aside; the sidecar is what is reported, with what fixes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from sampler.loading import ModelDirectory, ModelFileUnusable, expected_shapes_for, sidecar_path
from sampler.model_files import (
    SIDECAR_FIX,
    CheckpointVerifier,
    available_models,
    file_problems,
    file_status,
    model_path,
    model_status,
    verify_file,
)
from tests.tiny_model_dir import write_tiny_model_dir

ONE_B = ("vqvae", "upsampler_level_0", "upsampler_level_1", "prior_1b_lyrics")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model_dir(tmp_path_factory.mktemp("pristine"))


@pytest.fixture
def models(pristine: Path, tmp_path: Path) -> Path:
    target = tmp_path / "models"
    for file in pristine.rglob("*"):
        if file.is_file():
            (target / file.relative_to(pristine)).parent.mkdir(parents=True, exist_ok=True)
            (target / file.relative_to(pristine)).write_bytes(file.read_bytes())
    return target


def verifier_for(model_dir: Path) -> CheckpointVerifier:
    return CheckpointVerifier(expected_shapes_for=lambda name: expected_shapes_for(name, model_dir))


@pytest.mark.parametrize("content", ["{", "[]", "null", '"hparams"'])
def test_a_malformed_vqvae_sidecar_makes_the_model_unusable_and_says_so(models: Path, content: str) -> None:
    sidecar = sidecar_path(model_path(models, "vqvae"))
    sidecar.write_text(content)
    states = {name: file_status(name, models) for name in ONE_B}
    assert {status.state for status in states.values()} == {"bad_sidecar"}
    assert str(sidecar) in states["vqvae"].description and SIDECAR_FIX in states["vqvae"].description
    assert (
        states["prior_1b_lyrics"].description
        == "cannot be used until the VQ-VAE's sidecar is fixed (see vqvae)"
    )
    summary = model_status(models)["1b_lyrics"].summary
    assert summary.startswith("vqvae: ") and str(sidecar) in summary and "ready" not in summary
    assert available_models(models) == frozenset()  # a worker does not claim a job it cannot load


def test_a_prior_sidecar_that_is_not_an_object_says_what_fixes_it(models: Path) -> None:
    checkpoint = model_path(models, "upsampler_level_0")
    sidecar_path(checkpoint).write_text("[]")
    assert file_status("vqvae", models).state == "present"
    status = file_status("upsampler_level_0", models)
    assert status.state == "bad_sidecar" and status.description.endswith(SIDECAR_FIX)
    with pytest.raises(ModelFileUnusable, match=r"holds a JSON array.*fix it"):
        ModelDirectory(models, "1b_lyrics").prior_config(0)


@pytest.mark.parametrize("content", ["{", "[]", '{"levels": 3}'])
def test_verifying_with_a_wrong_vqvae_sidecar_blames_it_alone_and_moves_nothing(
    models: Path, content: str
) -> None:
    sidecar_path(model_path(models, "vqvae")).write_text(content)
    before = {path: path.read_bytes() for path in models.rglob("*.pth.tar")}
    verifier = verifier_for(models)
    results = {name: verify_file(name, models, verifier) for name in ONE_B}
    assert results["vqvae"].sidecar_of == "vqvae" and not results["vqvae"].not_checked
    assert results["vqvae"].problems[0].endswith(SIDECAR_FIX)
    for name in ONE_B[1:]:
        result = results[name]
        assert not result.ok and result.not_checked and result.sidecar_of == "vqvae"
        assert result.moved_to is None and result.message.startswith(f"NOT CHECKED {name}: ")
        assert file_problems(name, model_path(models, name), verifier) == [
            "not checked: its shapes depend on the VQ-VAE's sidecar, which is wrong (see vqvae)"
        ]
    assert {path: path.read_bytes() for path in models.rglob("*.pth.tar")} == before
    assert not list(models.rglob("*.corrupt"))


def test_a_link_loop_in_the_model_directory_is_not_a_permission_problem(models: Path) -> None:
    top = models / "1b_lyrics"
    for file in top.iterdir():
        file.unlink()
    top.rmdir()
    top.symlink_to(top.name)
    status = file_status("prior_1b_lyrics", models)
    assert status.state == "unreadable"
    assert (
        status.description
        == f"{top} in the model directory is a symbolic link loop: point the link at a folder"
    )
