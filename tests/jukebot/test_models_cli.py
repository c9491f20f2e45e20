from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from jukebot.commands.models import ModelsCliContext, models
from sampler.jukebox.registry import CHECKPOINTS, DEFAULT_MIRRORS, MODELS
from sampler.model_files import CheckpointVerifier, model_path
from tests.sampler.http_fixture import FileServer, closed_port_url, running_file_server, silent_server

SHAPES = {"blocks.0.w": (8, 16), "blocks.0.b": (16,)}


def tiny_checkpoint(shapes: dict[str, tuple[int, ...]] = SHAPES) -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": {key: torch.zeros(shape) for key, shape in shapes.items()}}, buffer)
    return buffer.getvalue()


@pytest.fixture
def server() -> Iterator[FileServer]:
    with running_file_server() as running:
        yield running


@pytest.fixture
def model_dir(clean_env: Path, monkeypatch: pytest.MonkeyPatch, server: FileServer) -> Path:
    directory = clean_env / "models"
    monkeypatch.setenv("JUKEBOT_MODEL_DIR", str(directory))
    monkeypatch.setenv("JUKEBOT_MODEL_MIRRORS", f"{server.url}/gone/ {server.url}/models/")
    return directory


def invoke(*args: str) -> Result:
    context = ModelsCliContext(
        make_verifier=lambda: CheckpointVerifier(expected_shapes_for=lambda name: SHAPES), backoff=0.0
    )
    return CliRunner().invoke(models, list(args), obj=context)


def serve_model(server: FileServer, model: str) -> None:
    for name in MODELS[model].checkpoints:
        server.serve(f"models/{CHECKPOINTS[name].path}", tiny_checkpoint())


def test_list_download_verify_round_trip(server: FileServer, model_dir: Path) -> None:
    listed = invoke("list")
    assert listed.exit_code == 0, listed.output
    assert f"Model directory: {model_dir}" in listed.output
    assert "1b_lyrics (lyrics): 4 of 4 files to fetch: jukebot models download 1b_lyrics" in listed.output
    assert "5b (no lyrics): 4 of 4 files to fetch" in listed.output

    serve_model(server, "1b_lyrics")
    downloaded = invoke("download", "1b_lyrics", "--no-progress")
    assert downloaded.exit_code == 0, downloaded.output
    assert (
        f"prior_1b_lyrics: downloaded ({model_dir / '1b_lyrics/prior_level_2.pth.tar'})" in downloaded.output
    )
    assert "4 file(s) to fetch, " in downloaded.output and "ids" not in downloaded.output

    listed = invoke("list")
    assert "1b_lyrics (lyrics): ready" in listed.output
    vqvae_line = next(line for line in listed.output.splitlines() if line.strip().startswith("vqvae"))
    assert "5b/vqvae.pth.tar" in vqvae_line and "verified (keys and shapes match)" in vqvae_line
    assert "5b (no lyrics): 1 of 4 files to fetch" in listed.output  # shares vqvae and upsamplers

    again = invoke("download", "1b_lyrics")
    assert again.exit_code == 0 and again.output.count("already present") == 4
    assert "to fetch" not in again.output

    verified = invoke("verify", "1b_lyrics")
    assert verified.exit_code == 0, verified.output
    assert verified.output.count("OK  ") == 4 and "4 file(s) OK." in verified.output


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
    assert "BAD vqvae" in result.output and "blocks.0.w: file (8, 17) vs model (8, 16)" in result.output
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
    server.serve(f"models/{CHECKPOINTS['vqvae'].path}", tiny_checkpoint())
    result = invoke("download", "5b", "--retries", "0")
    assert result.exit_code == 1
    assert "vqvae: downloaded" in result.output
    assert "FAILED prior_5b: prior_5b not found on any mirror: tried " in result.output
    assert "3 of 4 files could not be downloaded" in result.output
    assert model_path(model_dir, "vqvae").exists()


def test_no_network_fails_fast_with_one_line_per_mirror(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = closed_port_url()
    with silent_server() as silent:
        monkeypatch.setenv("JUKEBOT_MODEL_MIRRORS", f"{refused}/models/,{silent}/models/")
        started = time.monotonic()
        result = invoke("download", "1b_lyrics", "--connect-timeout", "0.5", "--timeout", "0.5")
        elapsed = time.monotonic() - started
    assert result.exit_code == 1 and elapsed < 3
    lines = result.output.strip().splitlines()
    assert lines == [
        f"mirror {refused}/models/ cannot be reached (Connection refused); skipping it",
        f"mirror {silent}/models/ cannot be reached (no answer within 0.5 s); skipping it",
        lines[-1],
    ]
    assert lines[-1].startswith("Error: No model mirror could be reached: ")
    assert "Check this machine's network connection" in lines[-1] and "JUKEBOT_MODEL_MIRRORS" in lines[-1]


def test_the_default_mirrors_are_the_cdn_then_the_storage_origin(clean_env: Path) -> None:
    from jukebot.settings import Settings

    assert DEFAULT_MIRRORS == (
        "https://openaipublic.azureedge.net/jukebox/models/",
        "https://openaipublic.blob.core.windows.net/jukebox/models/",
    )
    assert Settings().model_mirrors == list(DEFAULT_MIRRORS)


def test_unknown_name_is_a_clear_error(model_dir: Path) -> None:
    result = invoke("download", "6b")
    assert result.exit_code == 1
    assert "Unknown model or file '6b': use one of 5b, 5b_lyrics, 1b_lyrics" in result.output
