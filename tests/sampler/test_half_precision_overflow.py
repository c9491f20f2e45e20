"""Logits that are not numbers. On a GPU the priors sample in float16, whose largest number is 65504:
an activation past it is infinite, and the logits after it NaN. The inverse-CDF draw then found no id
and fed one past the embedding back (on CUDA a device-side assert, which ends the device context: the
worker crashed, the job was tried again to the same NaN, and given up after its crashes); CUDA's
multinomial asserts on NaN too. Now a NaN row draws an id in range and is marked, the cascade reads the
marks once per window and says so, and the runner samples the rest of the job in float32 from its
newest window. Real float16 overflow here: a tiny model whose last MLP overflows float16 and not
float32, through the real checkpoint format and loader, on the CPU."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from sampler import cascade_runner
from sampler.cascade_runner import CascadeRunner, wider_dtype
from sampler.jukebox.cascade import NonFiniteLogits, SamplingRequest, draw, invert_cdf, rows_not_finite
from sampler.jukebox.checkpoint import save_checkpoint
from sampler.jukebox.decoding import DecodeOptions
from sampler.jukebox.registry import MODELS
from sampler.loading import ModelDirectory, load_cascade
from sampler.model_files import model_path
from sampler.worker.contract import JobFailed
from storage.store import JobStore
from tests.sampler.test_cascade_runner import claim, model_dir, run  # noqa: F401  (a fixture)
from tests.sampler.test_runner_robustness import CPU, FULL
from tests.tiny_model_dir import TINY_SONG_SECONDS

# The last block's MLP weights times this: its output overflows float16 at every token, not float32
# (the final LayerNorm brings it back to the size of the logits).
OVERFLOWS_FLOAT16 = 300.0
# ... and this overflows float32 too (the weights themselves stay finite in float32).
OVERFLOWS_FLOAT32 = 1e25
JOB = FULL.model_copy(update={"n_samples": 2, "lyrics": "", "seed": 11})


def overflowing_top_prior(models: Path, into: Path, scale: float) -> Path:
    """A copy of the model directory `models` whose 5b top prior's last MLP is `scale` times larger
    (and one thread for the tiny model's sampling)."""
    torch.set_num_threads(1)
    copy = Path(shutil.copytree(models, into))
    prior = ModelDirectory(copy, "5b").load_prior(2, "cpu", torch.float32)
    with torch.no_grad():
        mlp = prior.prior.transformer._attn_mods[-1].mlp
        mlp.c_fc.w.mul_(scale)
        mlp.c_proj.w.mul_(scale)
    save_checkpoint(prior, model_path(copy, MODELS["5b"].priors[2]))
    return copy


def dtypes_loaded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, torch.dtype]]:
    """(level, dtype) of every prior the real loader reads, in order."""
    seen: list[tuple[int, torch.dtype]] = []
    load = ModelDirectory.load_prior

    def recorded(self: ModelDirectory, level: int, device: Any = "cpu", dtype: Any = torch.float32) -> Any:
        seen.append((level, dtype))
        return load(self, level, device, dtype)

    monkeypatch.setattr(ModelDirectory, "load_prior", recorded)
    return seen


def test_a_nan_row_draws_an_id_in_range_is_marked_and_leaves_the_other_rows_as_they_were() -> None:
    logits = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    broken = logits.clone()
    broken[1, 5] = float("nan")
    broken[2, 3] = float("inf")  # an overflow to infinity: its softmax is NaN too
    broken[3] = -float("inf")  # nothing left to draw from
    u = torch.rand(4, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    totals = torch.zeros(4, dtype=torch.float64)
    ids = invert_cdf(broken, u, totals)
    assert rows_not_finite(totals).tolist() == [False, True, True, True]
    assert int(ids.min()) >= 0 and int(ids.max()) < 16  # was 16: past the embedding
    assert int(ids[0]) == int(invert_cdf(logits, u)[0])
    # the reference's exact draw marks them too (on CUDA its multinomial would assert)
    totals.zero_()
    ids = draw(broken, torch.Generator().manual_seed(2), totals)
    assert rows_not_finite(totals).tolist() == [False, True, True, True]
    assert int(ids.min()) >= 0 and int(ids.max()) < 16
    assert int(ids[0]) == int(draw(logits, torch.Generator().manual_seed(2))[0])


@pytest.mark.parametrize("path", ["sliced", "static"])
def test_the_cascade_says_which_window_gave_logits_that_are_not_numbers(
    model_dir: Path,  # noqa: F811
    tmp_path: Path,
    path: str,
) -> None:
    models = overflowing_top_prior(model_dir, tmp_path / "models", OVERFLOWS_FLOAT16)
    cascade = load_cascade(models, "5b", dtype=torch.float16, decode=DecodeOptions(path=path))  # type: ignore[arg-type]
    request = SamplingRequest(
        mode="ancestral",
        sample_length=int(TINY_SONG_SECONDS * 44100) // 2,
        total_length=int(TINY_SONG_SECONDS * 44100),
        n_samples=2,
        artist="unknown",
        genre="unknown",
        levels=(2,),
        seed=3,
    )
    with pytest.raises(NonFiniteLogits) as raised:
        cascade.sample(request)
    assert str(raised.value) == (
        "the level-2 prior's outputs were not numbers (NaN or infinite) for 2 of 2 samples in window 1 "
        "of that level"
    )
    assert (raised.value.window.level, raised.value.window.index) == (2, 0)


async def test_a_half_precision_overflow_goes_on_with_float32s_range_and_gives_its_codes(
    model_dir: Path,  # noqa: F811
    tmp_path: Path,
    sqlite_store: JobStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """From float16 it goes on in bfloat16 where the device has it (the CPU does; CUDA from compute
    capability 8): float32's range at float16's memory."""
    models = overflowing_top_prior(model_dir, tmp_path / "models", OVERFLOWS_FLOAT16)
    wide = run(
        CascadeRunner(CPU, models, dtype=torch.bfloat16),
        await claim(sqlite_store, kind="generate", model="5b", params=JOB),
    )
    loaded = dtypes_loaded(monkeypatch)
    caplog.set_level(logging.WARNING, logger=cascade_runner.__name__)
    half = CascadeRunner(CPU, models, dtype=torch.float16)
    task = await claim(sqlite_store, kind="generate", model="5b", params=JOB)
    samples = run(half, task)
    # the top level's first window overflowed: everything after it, that is the whole job, in bfloat16
    for level in (0, 1, 2):
        assert [getattr(s, f"codes_level_{level}") for s in samples] == [
            getattr(s, f"codes_level_{level}") for s in wide
        ]
    assert loaded[0] == (2, torch.float16) and set(loaded[1:]) == {
        (0, torch.bfloat16),
        (1, torch.bfloat16),
        (2, torch.bfloat16),
    }
    (said,) = [r.getMessage() for r in caplog.records if "not numbers" in r.getMessage()]
    assert said == (
        f"job #{task.job.id}: the level-2 prior's outputs were not numbers (NaN or infinite) for 2 of 2 "
        "samples in window 1 of that level in float16; going on from its newest window in bfloat16"
    )
    # the next job starts in the runner's half precision again (bfloat16 only for the job that needed it)
    loaded.clear()
    run(half, await claim(sqlite_store, kind="generate", model="5b", params=JOB))
    assert loaded[0] == (2, torch.float16)


def test_without_bfloat16_float16_widens_to_float32_and_float32_to_nothing() -> None:
    assert wider_dtype(torch.float16, CPU) == torch.bfloat16
    assert wider_dtype(torch.bfloat16, CPU) == torch.float32
    assert wider_dtype(torch.float32, CPU) is None


async def test_a_model_too_big_for_the_wider_dtype_fails_the_job_and_leaves_the_model_served(
    model_dir: Path,  # noqa: F811
    tmp_path: Path,
    sqlite_store: JobStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The wider dtype's prior did not fit: the job was sent back "does not fit" and the model paused on
    the worker for 10 minutes, though it fits in float16; back on it, the job overflowed again."""
    models = overflowing_top_prior(model_dir, tmp_path / "models", OVERFLOWS_FLOAT16)
    load = ModelDirectory.load_prior

    def only_float16_fits(self: ModelDirectory, level: int, device: Any = "cpu", dtype: Any = None) -> Any:
        if dtype != torch.float16:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return load(self, level, device, dtype)

    monkeypatch.setattr(ModelDirectory, "load_prior", only_float16_fits)
    half = CascadeRunner(CPU, models, dtype=torch.float16)
    with pytest.raises(JobFailed) as failed:
        run(half, await claim(sqlite_store, kind="generate", model="5b", params=JOB))
    assert str(failed.value) == (
        "This job's logits stopped being numbers in float16 (an overflow), and going on in bfloat16 needs "
        "more memory than cpu has free (its level-2 prior does not fit). Its finished windows are kept; "
        "try another seed or a lower temperature."
    )
    assert "5b" in half.models  # still served: it fits in float16


async def test_logits_that_are_not_numbers_in_float32_fail_the_job_saying_what_to_check(
    model_dir: Path,  # noqa: F811
    tmp_path: Path,
    sqlite_store: JobStore,
) -> None:
    models = overflowing_top_prior(model_dir, tmp_path / "models", OVERFLOWS_FLOAT32)
    task = await claim(sqlite_store, kind="generate", model="5b", params=JOB)
    with pytest.raises(JobFailed) as failed:
        run(CascadeRunner(CPU, models, dtype=torch.bfloat16), task)  # then float32: no number either
    assert str(failed.value) == (
        "This job cannot be sampled: the level-2 prior's outputs were not numbers (NaN or infinite) for 2 "
        "of 2 samples in window 1 of that level, in full precision (float32). The 5b model's files may "
        "hold damaged weights: run `jukebot models verify 5b`."
    )
