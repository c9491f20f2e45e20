"""A mirror whose copy of a file fails verification is a failed mirror for that file: the next is tried.

A copy large enough to pass the "far smaller than the weights" rule can still be wrong (random bytes,
another checkpoint). It is said once, moved aside (nothing of it resumed) and the next mirror serves
the file; only when every mirror fails does the file fail, with one message. The size announced before
downloading never comes from a copy the size rule refuses.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

from jukebot.cli import main
from sampler.jukebox.registry import CHECKPOINTS
from sampler.loading import expected_shapes_for
from sampler.model_files import (
    VerificationError,
    download,
    download_file,
    file_status,
    model_path,
)
from tests.sampler.http_fixture import FileServer, running_file_server
from tests.sampler.test_model_files import TINY_SHAPES, model_dir, quick, shapes_verifier, tiny_checkpoint

__all__ = ["model_dir"]  # a fixture shared with the other download tests

VQVAE_PATH = CHECKPOINTS["vqvae"].path  # "5b/vqvae.pth.tar"


def random_bytes(size: int, seed: int = 0) -> bytes:
    """Noise that is no checkpoint (neither a zip nor a pickle header)."""
    return b"\x00" + random.Random(seed).randbytes(size - 1)


@pytest.fixture
def first() -> Iterator[FileServer]:
    with running_file_server() as running:
        yield running


@pytest.fixture
def second() -> Iterator[FileServer]:
    with running_file_server() as running:
        yield running


def leftovers(model_dir: Path) -> list[str]:
    return sorted(
        path.name for path in (model_dir / "5b").iterdir() if path.name.endswith((".part", ".corrupt"))
    )


def test_a_damaged_copy_on_the_first_mirror_falls_back_to_the_second(
    first: FileServer, second: FileServer, model_dir: Path
) -> None:
    good = tiny_checkpoint()
    first.serve(VQVAE_PATH, random_bytes(3 * len(good)))  # passes the size rule: only loading tells
    second.serve(VQVAE_PATH, good)
    messages: list[str] = []
    result = download_file(
        "vqvae",
        model_dir,
        [f"{first.url}/", f"{second.url}/"],
        verifier=shapes_verifier(),
        options=quick(retries=2, notify=messages.append),
    )
    assert result.downloaded and result.url == f"{second.url}/{VQVAE_PATH}"
    assert result.path.read_bytes() == good and file_status("vqvae", model_dir).state == "verified"
    assert messages == [
        f"mirror {first.url}/ served a damaged copy of {VQVAE_PATH} (it is not a PyTorch checkpoint "
        "(no zip or pickle header)); trying the next mirror"
    ]
    assert len(first.hits_for(VQVAE_PATH)) == 1  # said and skipped once, not retried
    (from_second,) = second.hits_for(VQVAE_PATH)
    assert from_second.range is None  # nothing of the damaged copy resumed
    assert leftovers(model_dir) == []


def test_only_when_every_mirror_fails_does_the_file_fail_with_one_message(
    first: FileServer, second: FileServer, model_dir: Path
) -> None:
    noise = random_bytes(40_000)
    wrong = tiny_checkpoint({**TINY_SHAPES, "bottleneck.k": (16, 9)})
    first.serve(VQVAE_PATH, noise)
    second.serve(VQVAE_PATH, wrong)
    messages: list[str] = []
    with pytest.raises(VerificationError) as info:
        download_file(
            "vqvae",
            model_dir,
            [f"{first.url}/", f"{second.url}/"],
            verifier=shapes_verifier(),
            options=quick(retries=2, notify=messages.append),
        )
    part = model_dir / (VQVAE_PATH + ".part")
    corrupt = model_dir / (VQVAE_PATH + ".corrupt")
    assert str(info.value) == (
        f"No good copy of vqvae on any mirror: {first.url}/{VQVAE_PATH} served a damaged copy (it is not a "
        f"PyTorch checkpoint (no zip or pickle header)); {second.url}/{VQVAE_PATH} served a damaged copy "
        "(it does not fit the model: 1 wrong shape (bottleneck.k: file (16, 9) vs model (16, 8)). Check "
        "that the file and the model configuration are for the same model). The last damaged copy was "
        f"moved aside to {corrupt}; set JUKEBOT_MODEL_MIRRORS to a mirror with a good copy, or install "
        "one you have with `jukebot models import`."
    )
    assert len(messages) == 1 and messages[0].startswith(f"mirror {first.url}/ served a damaged copy")
    assert not part.exists() and corrupt.read_bytes() == wrong
    assert not (model_dir / VQVAE_PATH).exists()
    assert [len(server.hits_for(VQVAE_PATH)) for server in (first, second)] == [1, 1]


def test_a_damaged_resumed_copy_is_fetched_afresh_before_the_mirror_is_blamed(
    first: FileServer, model_dir: Path
) -> None:
    good = tiny_checkpoint()
    part = model_dir / (VQVAE_PATH + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(random_bytes(5_000))  # left by an earlier run, from a mirror with a bad copy
    first.serve(VQVAE_PATH, good)
    messages: list[str] = []
    result = download_file(
        "vqvae",
        model_dir,
        [f"{first.url}/"],
        verifier=shapes_verifier(),
        options=quick(notify=messages.append),
    )
    assert result.path.read_bytes() == good
    assert [hit.range for hit in first.hits_for(VQVAE_PATH)] == ["bytes=5000-", None]
    assert len(messages) == 1
    assert messages[0].startswith("vqvae: the copy resumed from an earlier partial download is damaged (")
    assert messages[0].endswith(f"); fetching it afresh from {first.url}/")
    assert leftovers(model_dir) == []


def test_the_size_announced_skips_a_head_answer_the_size_rule_refuses(
    first: FileServer, second: FileServer, model_dir: Path
) -> None:
    good = tiny_checkpoint()
    first.serve(VQVAE_PATH, good[:7000])  # far below the 12.4 KiB its weights take in fp16
    second.serve(VQVAE_PATH, good)
    messages: list[str] = []
    report = download(
        "vqvae",
        model_dir,
        [f"{first.url}/", f"{second.url}/"],
        verifier=shapes_verifier(),
        options=quick(notify=messages.append),
    )
    assert report.failures == {} and report.results[0].url == f"{second.url}/{VQVAE_PATH}"
    assert messages[0] == f"1 file(s) to fetch, {len(good) / 1024:.1f} KiB in all, into {model_dir}"

    model_path(model_dir, "vqvae").unlink()
    messages.clear()
    alone = download(
        "vqvae",
        model_dir,
        [f"{first.url}/"],
        verifier=shapes_verifier(),
        options=quick(notify=messages.append),
    )
    assert "vqvae" in alone.failures
    assert messages[0] == f"1 file(s) to fetch, of unknown size, into {model_dir}"  # (not "0 B in all")


# ----------------------------------------------------------------------------- the command, as reported


def published_vqvae() -> bytes:
    """A checkpoint with the published VQ-VAE's keys and shapes (zeros, fp16: about 3.8 MB)."""
    shapes = expected_shapes_for("vqvae", Path("/nonexistent"))
    buffer = io.BytesIO()
    torch.save(
        {"model": {key: torch.zeros(shape, dtype=torch.float16) for key, shape in shapes.items()}}, buffer
    )
    return buffer.getvalue()


def jukebot_download(model_dir: Path, *mirrors: str) -> Result:
    env = {"JUKEBOT_MODEL_DIR": str(model_dir), "JUKEBOT_MODEL_MIRRORS": ",".join(mirrors)}
    return CliRunner().invoke(
        main, ["models", "download", "vqvae", "--no-progress", "--retries", "1"], env=env
    )


@pytest.mark.usefixtures("clean_env")
def test_jukebot_models_download_uses_the_second_mirror_when_the_first_copy_is_damaged(
    first: FileServer, second: FileServer, model_dir: Path
) -> None:
    good = published_vqvae()
    first.serve(VQVAE_PATH, random_bytes(7 * 1024 * 1024))  # above the 3.6 MiB the size rule asks
    second.serve(VQVAE_PATH, good)
    result = jukebot_download(model_dir, f"{first.url}/", f"{second.url}/")
    assert result.exit_code == 0, result.output
    assert result.output.count("served a damaged copy") == 1
    assert (
        f"mirror {first.url}/ served a damaged copy of {VQVAE_PATH} (it is not a PyTorch checkpoint "
        "(no zip or pickle header)); trying the next mirror"
    ) in result.output
    assert f"vqvae: downloaded ({model_path(model_dir, 'vqvae')})" in result.output
    assert model_path(model_dir, "vqvae").read_bytes() == good
    assert leftovers(model_dir) == []


@pytest.mark.usefixtures("clean_env")
def test_jukebot_models_download_fails_once_clearly_when_every_copy_is_damaged(
    first: FileServer, second: FileServer, model_dir: Path
) -> None:
    first.serve(VQVAE_PATH, random_bytes(7 * 1024 * 1024))
    second.serve(VQVAE_PATH, random_bytes(5 * 1024 * 1024, seed=1))
    for _ in range(2):  # a rerun does not resume a damaged copy: it fails the same way
        result = jukebot_download(model_dir, f"{first.url}/", f"{second.url}/")
        assert result.exit_code == 1
        failed = [line for line in result.output.splitlines() if line.startswith("FAILED vqvae: ")]
        assert len(failed) == 1, result.output
        assert failed[0].startswith("FAILED vqvae: No good copy of vqvae on any mirror: ")
        assert ".part" not in result.output and "re-download" not in result.output
        assert result.output.count("JUKEBOT_MODEL_MIRRORS") == 1
        assert "jukebot models download" not in result.output
        assert leftovers(model_dir) == ["vqvae.pth.tar.corrupt"]
