"""The real runner when a `.hparams.json` sidecar gets past the check before each claim (it is a JSON
object) but describes no architecture: a key missing, unknown, or of the wrong type. The job goes back
to the queue; the verdict is recorded against that sidecar, so no worker on the directory serves the
models that use it until the sidecar changes; the log names the sidecar and says how to fix it (not to
verify and download a checkpoint that is not damaged)."""

from __future__ import annotations

import errno
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from sampler.cascade_runner import CascadeRunner
from sampler.loading import ModelFileUnusable, sidecar_path
from sampler.model_files import SIDECAR_FIX, VerifiedCache, model_path
from sampler.worker.contract import DeviceSpec, ModelNotHere
from sampler.worker.runtime import JobOutcome, Worker
from storage import JobStatus
from storage.store import JobStore
from tests.sampler.test_cascade_runner import PREVIEW, claim, model_dir, run
from tests.sampler.test_runner_robustness import worker_of

__all__ = ["model_dir", "worker_of"]

CPU = DeviceSpec.cpu()


def lacks_keys(hparams: dict[str, Any]) -> str:
    return json.dumps({"levels": hparams.get("levels", 3)})


def unknown_key(hparams: dict[str, Any]) -> str:
    return json.dumps(hparams | {"foo": 1})


def n_ctx_a_string(hparams: dict[str, Any]) -> str:
    return json.dumps(hparams | {"n_ctx": str(hparams["n_ctx"])})


def width_a_string(hparams: dict[str, Any]) -> str:
    return json.dumps(hparams | {"width": str(hparams["width"])})


# (whose sidecar, how it is wrong, what it says, the models still served)
CASES = [
    ("vqvae", lacks_keys, "lack required key(s)", frozenset()),
    ("vqvae", width_a_string, "'width' must be a whole number, not the string", frozenset()),
    ("prior_1b_lyrics", unknown_key, "unknown prior hparam 'foo'", frozenset({"5b"})),
    (
        "prior_1b_lyrics",
        n_ctx_a_string,
        "'n_ctx' must be a whole number, not the string '",
        frozenset({"5b"}),
    ),
]
IDS = ["vqvae lacks keys", "vqvae width a string", "prior unknown key", "prior n_ctx a string"]


@pytest.fixture
def models(model_dir: Path, tmp_path: Path) -> Path:
    """A model directory of this test's own, to break."""
    return Path(shutil.copytree(model_dir, tmp_path / "models"))


def cpu_runner(models: Path) -> CascadeRunner:
    torch.set_num_threads(1)
    return CascadeRunner(CPU, models)


def break_sidecar(models: Path, name: str, how: Callable[[dict[str, Any]], str]) -> tuple[Path, str]:
    """Write a wrong sidecar for `name`; its path and the good text, to put back."""
    sidecar = sidecar_path(model_path(models, name))
    good = sidecar.read_text()
    sidecar.write_text(how(json.loads(good)))
    return sidecar, good


def checkpoints(models: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in models.rglob("*.pth.tar")}


@pytest.mark.parametrize(("name", "how", "said", "served"), CASES, ids=IDS)
async def test_a_sidecar_that_describes_no_architecture_is_named_with_its_fix_until_it_changes(
    models: Path,
    sqlite_store: JobStore,
    worker_of: Callable[[CascadeRunner], Worker],
    caplog: pytest.LogCaptureFixture,
    name: str,
    how: Callable[[dict[str, Any]], str],
    said: str,
    served: frozenset[str],
) -> None:
    runner = cpu_runner(models)
    worker = worker_of(runner)
    sidecar, good = break_sidecar(models, name, how)
    before = checkpoints(models)
    job_id = await sqlite_store.enqueue(
        kind="generate", model="1b_lyrics", params=PREVIEW.to_json(), channel_id=1, user_id=2, max_attempts=3
    )
    claimed = await sqlite_store.claim(worker.worker_id, await worker.advertise(), 60)
    assert claimed is not None  # the sidecar is a JSON object: it gets past the check before a claim
    with caplog.at_level(logging.INFO):
        assert await worker.run_job(claimed) is JobOutcome.RELEASED
    job = await sqlite_store.get_job(job_id)
    assert job.status is JobStatus.QUEUED and job.attempts == 0 and job.error is None
    # said once, against the sidecar, with the fix; nothing to verify or fetch again
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    told = [message for message in errors if str(sidecar) in message]
    assert len(told) == 1, errors
    assert said in told[0] and SIDECAR_FIX in told[0], told[0]
    assert "models download" not in told[0] and "models verify" not in told[0], told[0]
    # no worker on this directory serves the models that use it: this one, nor one started now
    assert await worker.advertise() == served
    assert cpu_runner(models).models == served
    assert checkpoints(models) == before  # nothing moved aside
    # the sidecar fixed: served again, by this worker and any other
    sidecar.write_text(good)
    assert await worker.advertise() == {"1b_lyrics", "5b"}
    assert cpu_runner(models).models == {"1b_lyrics", "5b"}


@pytest.mark.parametrize(("name", "how", "said", "served"), CASES[::3], ids=IDS[::3])
async def test_where_the_verdict_cannot_be_recorded_a_fixed_sidecar_is_served_again(
    models: Path,
    sqlite_store: JobStore,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    how: Callable[[dict[str, Any]], str],
    said: str,
    served: frozenset[str],
) -> None:
    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(VerifiedCache, "put", disk_full)
    runner = cpu_runner(models)
    sidecar, good = break_sidecar(models, name, how)
    with pytest.raises(ModelNotHere, match="remembered until the worker restarts") as raised:
        run(runner, await claim(sqlite_store, kind="generate", model="1b_lyrics", params=PREVIEW))
    cause = raised.value.__cause__
    assert isinstance(cause, ModelFileUnusable) and cause.sidecar == sidecar
    assert str(sidecar) in str(raised.value) and said in str(raised.value)
    assert SIDECAR_FIX in str(raised.value) and "models download" not in str(raised.value)
    assert runner.models == served
    sidecar.write_text(good)  # the checkpoint did not change: the sidecar did
    assert runner.models == {"1b_lyrics", "5b"}
