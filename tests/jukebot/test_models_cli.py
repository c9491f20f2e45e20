from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from jukebot.commands.models import ModelsCliContext, models
from sampler.jukebox.registry import CHECKPOINTS, MODELS
from sampler.model_files import CheckpointVerifier, ids_files_for, model_path
from tests.sampler.http_fixture import FileServer, running_file_server

SHAPES = {"blocks.0.w": (8, 16), "blocks.0.b": (16,)}


def tiny_checkpoint(shapes: dict[str, tuple[int, ...]] = SHAPES) -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": {key: torch.zeros(shape) for key, shape in shapes.items()}}, buffer)
    return buffer.getvalue()


def ids_copy(name: str) -> bytes:
    jukebox_infer = pytest.importorskip("jukebox_infer")
    return (Path(jukebox_infer.__file__).parent / "data" / "ids" / f"{name}.txt").read_bytes()


@pytest.fixture
def server() -> Iterator[FileServer]:
    with running_file_server() as running:
        yield running


@pytest.fixture
def model_dir(clean_env: Path, monkeypatch: pytest.MonkeyPatch, server: FileServer) -> Path:
    directory = clean_env / "models"
    monkeypatch.setenv("JUKEBOT_MODEL_DIR", str(directory))
    monkeypatch.setenv("JUKEBOT_MODEL_MIRRORS", f"{server.url}/gone/ {server.url}/models/")
    monkeypatch.setenv("JUKEBOT_IDS_SOURCE", f"{server.url}/ids/")
    return directory


def invoke(*args: str) -> Result:
    context = ModelsCliContext(
        make_verifier=lambda: CheckpointVerifier(expected_shapes_for=lambda name: SHAPES), backoff=0.0
    )
    return CliRunner().invoke(models, list(args), obj=context)


def serve_model(server: FileServer, model: str) -> None:
    for name in MODELS[model].checkpoints:
        server.serve(f"models/{CHECKPOINTS[name].path}", tiny_checkpoint())
    for name in ids_files_for(model):
        server.serve(f"ids/{name}.txt", ids_copy(name))


def test_list_download_verify_round_trip(server: FileServer, model_dir: Path) -> None:
    listed = invoke("list")
    assert listed.exit_code == 0, listed.output
    assert f"Model directory: {model_dir}" in listed.output
    assert "1b_lyrics (lyrics): 8 of 8 files to fetch: jukebot models download 1b_lyrics" in listed.output
    assert "5b (no lyrics): 6 of 6 files to fetch" in listed.output

    serve_model(server, "1b_lyrics")
    downloaded = invoke("download", "1b_lyrics", "--no-progress")
    assert downloaded.exit_code == 0, downloaded.output
    assert (
        f"prior_1b_lyrics: downloaded ({model_dir / '1b_lyrics/prior_level_2.pth.tar'})" in downloaded.output
    )
    assert "v3_genre_ids: downloaded" in downloaded.output

    listed = invoke("list")
    assert "1b_lyrics (lyrics): ready" in listed.output
    vqvae_line = next(line for line in listed.output.splitlines() if line.strip().startswith("vqvae"))
    assert "5b/vqvae.pth.tar" in vqvae_line and "verified (keys and shapes match)" in vqvae_line
    assert "5b (no lyrics): 1 of 6 files to fetch" in listed.output  # shares vqvae, upsamplers and v2 ids

    again = invoke("download", "1b_lyrics")
    assert again.exit_code == 0 and again.output.count("already present") == len(
        MODELS["1b_lyrics"].checkpoints
    ) + len(ids_files_for("1b_lyrics"))

    verified = invoke("verify", "1b_lyrics")
    assert verified.exit_code == 0, verified.output
    assert verified.output.count("OK  ") == 8 and "8 file(s) OK." in verified.output


def test_verify_reports_a_bad_file_and_exits_1(server: FileServer, model_dir: Path) -> None:
    serve_model(server, "1b_lyrics")
    assert invoke("download", "vqvae").exit_code == 0
    path = model_path(model_dir, "vqvae")
    path.write_bytes(tiny_checkpoint({"blocks.0.w": (8, 17), "blocks.0.b": (16,)}))
    present = invoke("download", "vqvae")
    assert "vqvae: already present" in present.output
    assert "not verified: `jukebot models verify vqvae` checks it" in present.output
    result = invoke("verify")
    assert result.exit_code == 1
    assert "BAD vqvae" in result.output and "blocks.0.w is (8, 17), expected (8, 16)" in result.output
    assert "Run `jukebot models download vqvae` to fetch it again." in result.output
    assert "1 problem(s) found" in result.output
    assert path.with_name("vqvae.pth.tar.corrupt").exists() and not path.exists()
    assert "vqvae: downloaded" in invoke("download", "vqvae").output  # fetched afresh


def test_verify_a_model_with_missing_files_fails(model_dir: Path) -> None:
    result = invoke("verify", "5b")
    assert result.exit_code == 1
    assert "MISSING prior_5b" in result.output and "run `jukebot models download 5b`" in result.output
    nothing = invoke("verify")
    assert nothing.exit_code == 0 and "No model files in" in nothing.output


def test_download_failures_are_reported_per_file_and_exit_1(server: FileServer, model_dir: Path) -> None:
    server.serve("ids/v2_artist_ids.txt", ids_copy("v2_artist_ids"))
    result = invoke("download", "ids", "--retries", "0")
    assert result.exit_code == 1
    assert "v2_artist_ids: downloaded" in result.output
    assert "FAILED v3_genre_ids: v3_genre_ids not found on any mirror: tried " in result.output
    assert "3 of 4 files could not be downloaded" in result.output
    assert model_path(model_dir, "v2_artist_ids").exists()


def test_unknown_name_is_a_clear_error(model_dir: Path) -> None:
    result = invoke("download", "6b")
    assert result.exit_code == 1
    assert "Unknown model or file '6b': use one of 5b, 5b_lyrics, 1b_lyrics" in result.output
