"""`jukebot sample --fp16` (the default on a GPU) whose logits overflow half precision: it ended in an
IndexError traceback (on CUDA a device-side assert). It now says what happened, keeps the finished
windows, and says to go on with `--fp32`, which finishes the run."""

from __future__ import annotations

from pathlib import Path

import torch
from click.testing import CliRunner, Result

from jukebot.cli import main
from tests.sampler.test_half_precision_overflow import (
    OVERFLOWS_FLOAT16,
    OVERFLOWS_FLOAT32,
    overflowing_top_prior,
)
from tests.tiny_model_dir import write_tiny_model_dir


def sample(model_dir: Path, out: Path, precision: str) -> Result:
    torch.set_num_threads(1)
    args = [
        "sample",
        "--model=5b",
        f"--model_dir={model_dir}",
        f"--name={out}",
        "--sample_length_in_seconds=0.0465",  # 2048 samples
        "--n_samples=2",
        "--levels=1",
        "--seed=3",
        "--device=cpu",
        precision,
        "--no-progress",
    ]
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_an_overflow_in_half_precision_says_to_go_on_with_fp32(tmp_path: Path) -> None:
    models = overflowing_top_prior(
        write_tiny_model_dir(tmp_path / "tiny", models=("5b",)), tmp_path / "models", OVERFLOWS_FLOAT16
    )
    out = tmp_path / "song"
    half = sample(models, out, "--fp16")
    assert half.exit_code == 1
    assert half.output.strip().splitlines()[-1] == (
        "Error: the level-2 prior's outputs were not numbers (NaN or infinite) for 2 of 2 samples in window 1 "
        "of that level, in half precision (it overflows now and then); no window had finished yet: run the "
        "same command again with --fp32 to go on in full precision."
    )
    full = sample(models, out, "--fp32")
    assert full.exit_code == 0, full.output
    assert (out / "level_2" / "item_1.wav").is_file()


def test_an_overflow_in_full_precision_says_to_verify_the_model(tmp_path: Path) -> None:
    models = overflowing_top_prior(
        write_tiny_model_dir(tmp_path / "tiny", models=("5b",)), tmp_path / "models", OVERFLOWS_FLOAT32
    )
    result = sample(models, tmp_path / "song", "--fp32")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        "Error: the level-2 prior's outputs were not numbers (NaN or infinite) for 2 of 2 samples in window 1 "
        "of that level, in full precision: the 5b model's files may hold damaged weights (run `jukebot "
        "models verify 5b`)."
    )
