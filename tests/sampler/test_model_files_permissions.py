"""Model files this user may not read, folders it may not look into or write, and sidecars that change.

A file that cannot be read is not damaged: it is never moved aside, fetched again or recorded as
failing verification (by `verify_file` or by a worker), and it is reported as a permission to fix.
A verdict holds only while the sidecars it was checked against stay as they were.

Real tiny model directories and real file modes; as root the tests marked `without_read_privileges`
run in a child process without the capabilities that let root read anything (tests/unprivileged.py).
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from sampler.cascade_runner import CascadeRunner
from sampler.loading import ModelDirectory, expected_shapes_for, sidecar_path
from sampler.model_files import (
    MODELS,
    CheckpointVerifier,
    ModelFilesMissing,
    ModelFileUnreadable,
    VerifiedCache,
    available_models,
    file_status,
    model_dir_problem,
    model_path,
    model_status,
    require_checkpoints,
    verify_file,
)
from sampler.worker.contract import DeviceSpec, ModelNotHere
from storage.store import JobStore
from tests.sampler.test_cascade_runner import PREVIEW, claim, run
from tests.tiny_model_dir import write_tiny_model_dir
from tests.unprivileged import SetMode, set_mode, without_read_privileges

__all__ = ["set_mode"]


def cannot_read(path: Path) -> str:
    return (
        f"cannot read {path} (permission denied): fix its permissions "
        "(the user running jukebot needs read access)"
    )


@pytest.fixture
def models(tmp_path: Path) -> Path:
    return write_tiny_model_dir(tmp_path / "models", models=("1b_lyrics", "5b"))


def verifier_for(model_dir: Path) -> CheckpointVerifier:
    return CheckpointVerifier(expected_shapes_for=lambda name: expected_shapes_for(name, model_dir))


def failed_verdicts(model_dir: Path) -> dict[str, object]:
    return {path: entry for path, entry in VerifiedCache(model_dir)._read().items() if not entry.get("ok")}


@without_read_privileges
def test_verify_leaves_a_file_it_cannot_read_where_it_is_and_records_nothing(
    models: Path, set_mode: SetMode
) -> None:
    vqvae = model_path(models, "vqvae")
    assert verify_file("vqvae", models, verifier_for(models)).ok
    for unreadable in (vqvae, sidecar_path(vqvae)):
        set_mode(unreadable, 0)
        result = verify_file("vqvae", models, verifier_for(models))  # one that reads the sidecar afresh
        assert not result.ok and result.moved_to is None
        assert result.message == f"UNREADABLE vqvae: {cannot_read(unreadable)}."
        assert vqvae.is_file() and not vqvae.with_name(vqvae.name + ".corrupt").exists()
        assert failed_verdicts(models) == {}
        # what `models list`, the doctor and every worker read: not served, and why, without a download
        status = file_status("vqvae", models)
        assert (status.state, status.description) == ("unreadable", cannot_read(unreadable))
        assert model_status(models)["1b_lyrics"].summary == cannot_read(unreadable)
        assert available_models(models) == frozenset()
        set_mode(unreadable, 0o644)
        assert file_status("vqvae", models).state == "verified"
        assert available_models(models) == {"1b_lyrics", "5b"}


@without_read_privileges
def test_a_folder_that_cannot_be_looked_into_is_a_state_not_a_crash(models: Path, set_mode: SetMode) -> None:
    folder = models / "5b"
    set_mode(folder, 0)
    problem = (
        f"cannot read {folder} in the model directory (permission denied): fix its permissions or set "
        "JUKEBOT_MODEL_DIR to a folder this user can read"
    )
    status = file_status("vqvae", models)
    assert (status.state, status.description) == ("unreadable", problem)
    assert model_status(models)["1b_lyrics"].summary == problem
    assert available_models(models) == frozenset()
    assert model_dir_problem(models) == "C" + problem[1:] + "."
    with pytest.raises(ModelFileUnreadable) as raised:
        require_checkpoints(models, "1b_lyrics")
    assert str(raised.value) == "C" + problem[1:] + "."


@without_read_privileges
def test_a_bad_file_in_a_folder_that_cannot_be_written_is_reported_and_kept(
    models: Path, set_mode: SetMode
) -> None:
    prior = model_path(models, "upsampler_level_0")
    prior.write_bytes(prior.read_bytes()[:1000])
    set_mode(prior.parent, 0o555)  # as a read-only mount would refuse the rename
    result = verify_file("upsampler_level_0", models, verifier_for(models))
    assert not result.ok and result.moved_to is None and prior.is_file()
    assert result.message.startswith(f"BAD upsampler_level_0: {prior}: it is 1000 B, but a genuine")
    assert result.message.endswith(
        f"It could not be moved aside, because {prior.parent} cannot be written (Permission denied): "
        "replace it with a good copy where the model directory is writable (for a read-only mount, at "
        "its source), or make the folder writable and run `jukebot models verify upsampler_level_0` again."
    )
    assert file_status("upsampler_level_0", models).state == "failed"  # the verdict is kept


def test_a_changed_sidecar_undoes_the_verdict(models: Path) -> None:
    verifier = verifier_for(models)
    for name in ("vqvae", "prior_1b_lyrics"):
        assert verify_file(name, models, verifier).ok
        assert file_status(name, models).state == "verified"
    sidecar = sidecar_path(model_path(models, "vqvae"))
    sidecar.write_text(json.dumps(json.loads(sidecar.read_text())))  # the same hparams, written anew
    assert file_status("vqvae", models).state == "present"
    assert file_status("prior_1b_lyrics", models).state == "present"  # its shapes follow the VQ-VAE's
    sidecar.write_text("garbage{\n")  # one that cannot be read: the sidecar is what to fix
    assert file_status("vqvae", models).state == "bad_sidecar"
    assert file_status("prior_1b_lyrics", models).state == "bad_sidecar"


def test_a_sidecar_that_appears_undoes_the_verdict(models: Path) -> None:
    vqvae = model_path(models, "vqvae")
    sidecar = sidecar_path(vqvae)
    hparams = sidecar.read_text()
    sidecar.unlink()
    assert verify_file("vqvae", models, CheckpointVerifier()).ok  # loads only: no sidecar needed
    assert file_status("vqvae", models).state == "verified"
    sidecar.write_text(hparams)
    assert file_status("vqvae", models).state == "present"


@pytest.mark.parametrize("unreadable", ["checkpoint", "sidecar"])
@without_read_privileges
async def test_the_worker_gives_back_a_job_whose_file_it_cannot_read_and_records_no_damage(
    unreadable: str, models: Path, sqlite_store: JobStore, set_mode: SetMode
) -> None:
    runner = CascadeRunner(DeviceSpec.cpu(), models)
    top = model_path(models, "prior_1b_lyrics")
    path = top if unreadable == "checkpoint" else sidecar_path(top)
    set_mode(path, 0)
    task = await claim(sqlite_store, kind="generate", model="1b_lyrics", params=PREVIEW)
    with pytest.raises(ModelNotHere) as raised:
        run(runner, task)
    assert isinstance(raised.value.__cause__, ModelFileUnreadable)
    assert isinstance(raised.value.__cause__, ModelFilesMissing)  # back to the queue, like a file not here
    assert str(raised.value) == "C" + cannot_read(path)[1:] + "."
    assert failed_verdicts(models) == {}
    assert runner.models == {"5b"}
    assert model_status(models)["1b_lyrics"].summary == cannot_read(path)
    set_mode(path, 0o644)
    assert runner.models == {"1b_lyrics", "5b"}
    assert os.access(path, os.R_OK)


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.EIO, "Input/output error"),  # a failing disk
        PermissionError(errno.EACCES, "Permission denied"),  # a security module: the file looks readable
    ],
)
def test_a_read_error_the_file_status_does_not_see_is_raised_not_taken_for_a_missing_file(
    models: Path, error: OSError
) -> None:
    """Taken for "unreadable" (a ModelFilesMissing), the job went back to the queue with no attempt
    counted while the model stayed served: the same worker claimed it again at once, forever. Raised,
    the job crashes, is tried again after a pause, and fails with the reason."""
    directory = ModelDirectory(models, "1b_lyrics")
    name = MODELS["1b_lyrics"].priors[2]
    assert file_status(name, models).state in ("verified", "present")
    with pytest.raises(OSError) as raised, directory._reading(name):
        raise error
    assert raised.value is error and not isinstance(raised.value, ModelFilesMissing)
    assert "1b_lyrics" in available_models(models)
