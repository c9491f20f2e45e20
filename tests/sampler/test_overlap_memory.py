"""A job whose levels sample at once (the GPU's default) that is cancelled or crashes frees its
windows' tensors as it ends. The failure a level thread kept held the threads' frames, and through
them the scheduler that kept it: a cycle only the garbage collector broke, whenever it happened to run,
which on a GPU kept a dead job's memory from the next one."""

from __future__ import annotations

import contextlib
import gc
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from sampler.cascade_runner import CascadeRunner
from sampler.jukebox.cascade import Cascade
from sampler.worker.contract import DeviceSpec, StopReason
from storage.store import JobStore
from tests.sampler.test_cascade_runner import PREVIEW, Recorder, claim, model_dir, run

__all__ = ["model_dir"]  # a fixture


@contextlib.contextmanager
def without_garbage_collector() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("ending", ["cancelled", "crashed"])
async def test_a_job_sampling_its_levels_at_once_frees_its_tensors_as_it_ends(
    model_dir: Path, sqlite_store: JobStore, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    runner = CascadeRunner(DeviceSpec.cpu(), model_dir, resident_priors="on", overlap_levels=True)
    held: list[weakref.ref[torch.Tensor]] = []
    sample_tokens = Cascade._sample_tokens

    def sampling(self: Cascade, *args: Any, **kwargs: Any) -> Any:
        window_memory = torch.zeros(250_000)  # stands for the window's activations, in its frame
        held.append(weakref.ref(window_memory))
        if ending == "crashed" and len(held) == 6:
            raise RuntimeError("a kernel failed")
        return sample_tokens(self, *args, **kwargs)

    monkeypatch.setattr(Cascade, "_sample_tokens", sampling)
    params = PREVIEW.model_copy(update={"n_samples": 1, "levels": "all"})
    task = await claim(sqlite_store, kind="generate", model="5b", params=params)
    recorder = Recorder(stop_after=20, reason=StopReason.CANCEL) if ending == "cancelled" else None
    ended = ""
    with without_garbage_collector():
        try:
            run(runner, task, recorder)
        except Exception as exc:  # dropped as the block ends, as a worker drops it
            ended = type(exc).__name__
        alive = sum(ref() is not None for ref in held)
    assert ended == {"cancelled": "JobCancelled", "crashed": "RuntimeError"}[ending]
    assert len(held) > 3 and alive == 0, f"{alive} of {len(held)} windows' tensors still held"
