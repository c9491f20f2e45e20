"""A runner's own settings (model directory, batch sizes) travel in the worker's config, not the
environment: `jukebot run|worker` fill them from their settings, the pool hands them to the factory."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import pytest
from pydantic import ValidationError

from jukebot.settings import Settings
from sampler.batch_sizes import DEFAULT_MAX_BATCH_SIZE
from sampler.cascade_runner import make_runner
from sampler.jukebox.decoding import DecodeOptions
from sampler.worker import runtime
from sampler.worker.contract import DeviceSpec, JobRunner
from sampler.worker.pool import _parse_runner_options
from sampler.worker.runtime import EXIT_CONFIG, WorkerConfig, run_worker


def test_the_settings_put_the_model_dir_and_batch_sizes_in_the_worker_config(tmp_path: Path) -> None:
    settings = Settings(  # type: ignore[call-arg]
        model_dir=tmp_path,
        max_batch_size="8,4,2",
        resident_priors="OFF",
        decode_path="Static",
        decode_compile="0",
        decode_kernels="Triton",
        overlap_levels="on",
    )
    options = dict(settings.worker_config().runner_options)
    assert options == {
        "model_dir": str(tmp_path),
        "max_batch_size": "8,4,2",
        "resident_priors": "off",
        "decode_path": "static",
        "decode_compile": "off",
        "decode_kernels": "triton",
        "overlap_levels": "on",
    }
    defaults = dict(Settings().worker_config().runner_options)  # type: ignore[call-arg]
    assert [
        defaults[key]
        for key in ("resident_priors", "decode_path", "decode_compile", "decode_kernels", "overlap_levels")
    ] == ["auto"] * 5
    with pytest.raises(ValidationError, match="resident_priors must be one of auto, on, off"):
        Settings(resident_priors="sometimes")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="decode_path must be one of auto, sliced, static, graph"):
        Settings(decode_path="fast")  # type: ignore[call-arg]
    with pytest.raises(
        ValidationError, match="decode_kernels must be one of auto, torch, triton, got 'cuda'"
    ):
        Settings(decode_kernels="cuda")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="overlap_levels must be one of auto, on, off, got 'both'"):
        Settings(overlap_levels="both")  # type: ignore[call-arg]


def test_the_cascade_runner_reads_its_options_and_not_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUKEBOT_MAX_BATCH_SIZE", "1")  # what the old environment route read
    runner = make_runner(DeviceSpec.cpu(), {"model_dir": str(tmp_path), "max_batch_size": "2,3,4"})
    assert runner.model_dir == tmp_path and runner.max_batch_size == (2, 3, 4)
    assert (
        make_runner(DeviceSpec.cpu(), {"model_dir": str(tmp_path)}).max_batch_size == DEFAULT_MAX_BATCH_SIZE
    )


def test_the_cascade_runner_takes_the_decode_loop_from_its_options(tmp_path: Path) -> None:
    runner = make_runner(DeviceSpec.cpu(), {"model_dir": str(tmp_path)})
    assert runner.decode == DecodeOptions(path="sliced")  # the CPU's default
    options = {"model_dir": str(tmp_path), "decode_path": "static", "decode_compile": "1"}
    assert make_runner(DeviceSpec.cpu(), options).decode == DecodeOptions(path="static", compile=True)
    auto = {"model_dir": str(tmp_path), "decode_path": "auto", "decode_compile": "auto"}
    assert make_runner(DeviceSpec.cpu(), auto).decode == DecodeOptions(path="sliced")
    kernels = {"model_dir": str(tmp_path), "decode_path": "graph", "decode_kernels": "triton"}
    assert make_runner(DeviceSpec.cpu(), kernels).decode == DecodeOptions(path="graph", kernels="triton")
    with pytest.raises(ValueError, match="decode_path must be one of auto, sliced, static, graph"):
        make_runner(DeviceSpec.cpu(), {"decode_path": "fast"})
    with pytest.raises(ValueError, match="decode_compile must be one of auto, on, off"):
        make_runner(DeviceSpec.cpu(), {"decode_compile": "yes please"})


@pytest.mark.parametrize(("setting", "overlap"), [(None, None), ("auto", None), ("ON", True), ("off", False)])
def test_the_cascade_runner_takes_levels_at_once_from_its_options(
    tmp_path: Path, setting: str | None, overlap: bool | None
) -> None:
    options = {"model_dir": str(tmp_path)} | ({} if setting is None else {"overlap_levels": setting})
    assert make_runner(DeviceSpec.cpu(), options).overlap_levels is overlap  # None: the device's default


def test_the_worker_hands_its_config_options_to_the_factory(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[Mapping[str, str]] = []

    def factory(device: DeviceSpec, options: Mapping[str, str]) -> JobRunner:
        seen.append(options)
        raise ValueError("the test stops here")

    monkeypatch.setattr(runtime, "load_runner_factory", lambda path: factory)
    config = WorkerConfig(runner_options=(("model_dir", "/models"), ("max_batch_size", "3")))
    with caplog.at_level(logging.ERROR):
        assert run_worker("sqlite+aiosqlite:///unused", "cpu", "any:factory", config) == EXIT_CONFIG
    assert seen == [{"model_dir": "/models", "max_batch_size": "3"}]


def test_pool_runner_options_are_key_value_pairs() -> None:
    assert _parse_runner_options(["model_dir=/m", "max_batch_size=4, 4, 2"]) == (
        ("model_dir", "/m"),
        ("max_batch_size", "4, 4, 2"),
    )
    with pytest.raises(ValueError, match="must look like KEY=VALUE"):
        _parse_runner_options(["model_dir"])
