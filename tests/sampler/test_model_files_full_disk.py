"""A disk that fills up just as a file is verified: `.verified.json` is only a cache, so failing to write
it is a warning; the checkpoint stays installed and no temp file is left behind.

The disk is really full for the cache's write: its temp file is a link to /dev/full, where every write
fails with ENOSPC, as on a filled partition."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from sampler.model_files import VERIFIED_CACHE, download, file_status, model_path, verify_file
from tests.sampler.http_fixture import FileServer, running_file_server
from tests.sampler.test_model_files import VQVAE_PATH, quick, shapes_verifier, tiny_checkpoint

pytestmark = pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")


@pytest.fixture
def server() -> Iterator[FileServer]:
    with running_file_server() as running:
        yield running


def fill_the_disk_for_the_cache(model_dir: Path) -> Path:
    """Make the cache's next write hit ENOSPC; returns the temp file it writes."""
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp = model_dir / f"{VERIFIED_CACHE}.{os.getpid()}.tmp"
    tmp.symlink_to("/dev/full")
    return tmp


def assert_warned_and_clean(caplog: pytest.LogCaptureFixture, tmp: Path) -> None:
    assert not tmp.exists() and not tmp.is_symlink()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("cannot update" in m and VERIFIED_CACHE in m and "No space left" in m for m in warnings), (
        warnings
    )


def test_a_full_disk_after_a_download_leaves_the_file_installed_and_warns(
    server: FileServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = tmp_path / "models"
    data = tiny_checkpoint()
    server.serve(f"a/{VQVAE_PATH}", data)
    tmp = fill_the_disk_for_the_cache(model_dir)
    with caplog.at_level(logging.WARNING, logger="sampler.model_files"):
        report = download(
            "vqvae", model_dir, [f"{server.url}/a/"], verifier=shapes_verifier(), options=quick()
        )
    assert not report.failures
    assert model_path(model_dir, "vqvae").read_bytes() == data
    assert_warned_and_clean(caplog, tmp)
    assert file_status("vqvae", model_dir).state == "present"  # usable; verified again next time


def test_verify_on_a_full_disk_still_gives_its_verdict(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = tmp_path / "models"
    path = model_path(model_dir, "vqvae")
    path.parent.mkdir(parents=True)
    path.write_bytes(tiny_checkpoint())
    tmp = fill_the_disk_for_the_cache(model_dir)
    with caplog.at_level(logging.WARNING, logger="sampler.model_files"):
        result = verify_file("vqvae", model_dir, shapes_verifier())
    assert result.ok
    assert_warned_and_clean(caplog, tmp)
