from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sampler.jukebox.registry import CHECKPOINTS, MODELS
from sampler.model_files import (
    CheckpointVerifier,
    DownloadError,
    DownloadOptions,
    DownloadResult,
    ModelFilesMissing,
    NoMirrorReachable,
    NotFoundOnMirrors,
    UnknownModelName,
    VerificationError,
    download,
    download_file,
    file_status,
    missing_checkpoints,
    model_path,
    require_checkpoints,
    resolve_names,
    verify_file,
)
from tests.sampler.http_fixture import FileServer, closed_port_url, running_file_server, silent_server

VQVAE_PATH = CHECKPOINTS["vqvae"].path  # "5b/vqvae.pth.tar"
TINY_SHAPES = {"encoders.0.w": (64, 96), "encoders.0.b": (96,), "bottleneck.k": (16, 8)}


def tiny_checkpoint(shapes: dict[str, tuple[int, ...]] = TINY_SHAPES, prefix: str = "") -> bytes:
    """A checkpoint in the published layout ({'model': state dict}), about 25 kB."""
    generator = torch.Generator().manual_seed(0)
    state = {prefix + key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}
    buffer = io.BytesIO()
    torch.save({"model": state, "step": 7}, buffer)
    return buffer.getvalue()


def shapes_verifier() -> CheckpointVerifier:
    return CheckpointVerifier(expected_shapes_for=lambda name: TINY_SHAPES)


def quick(**overrides: object) -> DownloadOptions:
    """No backoff waits, no progress bar, short timeout."""
    settings: dict[str, object] = dict(
        read_timeout=5.0, retries=0, backoff=0.0, progress=False, chunk_size=4096
    )
    settings.update(overrides)
    return DownloadOptions(**settings)  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[FileServer]:
    with running_file_server() as running:
        yield running


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


def test_download_installs_a_verified_file(server: FileServer, model_dir: Path) -> None:
    data = tiny_checkpoint()
    server.serve(f"a/{VQVAE_PATH}", data)
    result = download_file(
        "vqvae", model_dir, [f"{server.url}/a/"], verifier=shapes_verifier(), options=quick()
    )
    assert result.downloaded and result.path == model_dir / VQVAE_PATH
    assert result.path.read_bytes() == data
    assert not result.path.with_name("vqvae.pth.tar.part").exists()
    status = file_status("vqvae", model_dir)
    assert status.state == "verified" and status.checks == "shapes" and status.size == len(data)
    # Present now: a second run asks the server nothing.
    again = download_file(
        "vqvae", model_dir, [f"{server.url}/a/"], verifier=shapes_verifier(), options=quick()
    )
    assert not again.downloaded and len(server.hits) == 1


def test_interrupted_download_resumes_from_the_part_file(server: FileServer, model_dir: Path) -> None:
    data = tiny_checkpoint()
    cut = 10_000
    server.serve(VQVAE_PATH, data, drop_after=cut)
    with pytest.raises(DownloadError, match="connection early, after 10000 of") as info:
        download_file("vqvae", model_dir, [server.url], verifier=shapes_verifier(), options=quick())
    part = model_dir / (VQVAE_PATH + ".part")
    assert "is kept: run the download again to resume" in str(info.value)
    assert part.stat().st_size == cut and not (model_dir / VQVAE_PATH).exists()

    download_file("vqvae", model_dir, [server.url], verifier=shapes_verifier(), options=quick())
    assert (model_dir / VQVAE_PATH).read_bytes() == data
    first, second = server.hits_for(VQVAE_PATH)
    assert first.range is None and second.range == f"bytes={cut}-" and second.status == 206
    assert server.bytes_served(VQVAE_PATH) < 2 * len(data)
    assert server.bytes_served(VQVAE_PATH) == len(data)


def test_a_dropped_connection_is_retried_within_one_call(server: FileServer, model_dir: Path) -> None:
    data = tiny_checkpoint()
    server.serve(VQVAE_PATH, data, drop_after=5_000, drops=2)
    messages: list[str] = []
    download_file("vqvae", model_dir, [server.url], options=quick(retries=3, notify=messages.append))
    assert (model_dir / VQVAE_PATH).read_bytes() == data
    assert [hit.range for hit in server.hits_for(VQVAE_PATH)] == [None, "bytes=5000-", "bytes=10000-"]
    assert sum("retrying" in message for message in messages) == 2


def test_truncated_body_is_a_size_error_and_nothing_is_installed(server: FileServer, model_dir: Path) -> None:
    data = tiny_checkpoint()
    server.serve(VQVAE_PATH, data, announce_extra=1000)
    with pytest.raises(DownloadError, match=f"after {len(data)} of {len(data) + 1000} bytes"):
        download_file("vqvae", model_dir, [server.url], options=quick())
    assert not (model_dir / VQVAE_PATH).exists()


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"\x00" * 30_000, "it is not a PyTorch checkpoint (no zip or pickle header)"),
        ("wrong_shape", "1 wrong shape (bottleneck.k: file (16, 9) vs model (16, 8))"),
        ("missing_key", "1 missing key (e.g. encoders.0.b)"),
    ],
)
def test_corrupt_checkpoint_fails_verification(
    server: FileServer, model_dir: Path, payload: bytes | str, needle: str
) -> None:
    if payload == "wrong_shape":
        payload = tiny_checkpoint({**TINY_SHAPES, "bottleneck.k": (16, 9)})
    elif payload == "missing_key":
        payload = tiny_checkpoint({k: v for k, v in TINY_SHAPES.items() if k != "encoders.0.b"})
    assert isinstance(payload, bytes)
    server.serve(VQVAE_PATH, payload)
    with pytest.raises(VerificationError, match="moved aside") as info:
        download_file("vqvae", model_dir, [server.url], verifier=shapes_verifier(), options=quick())
    assert needle in str(info.value)
    assert not (model_dir / VQVAE_PATH).exists()
    assert (model_dir / (VQVAE_PATH + ".corrupt")).read_bytes() == payload


def test_not_found_on_the_first_mirror_falls_back_to_the_second(server: FileServer, model_dir: Path) -> None:
    data = tiny_checkpoint()
    server.serve(f"b/{VQVAE_PATH}", data)
    result = download_file("vqvae", model_dir, [f"{server.url}/a/", f"{server.url}/b"], options=quick())
    assert result.url == f"{server.url}/b/{VQVAE_PATH}"
    assert [(hit.path, hit.status) for hit in server.hits] == [
        (f"a/{VQVAE_PATH}", 404),
        (f"b/{VQVAE_PATH}", 200),
    ]


def test_a_failing_mirror_falls_back_to_the_next(server: FileServer, model_dir: Path) -> None:
    data = tiny_checkpoint()
    server.serve(f"a/{VQVAE_PATH}", data, status=503)
    server.serve(f"b/{VQVAE_PATH}", data)
    download_file("vqvae", model_dir, [f"{server.url}/a/", f"{server.url}/b/"], options=quick())
    assert (model_dir / VQVAE_PATH).read_bytes() == data


def test_not_found_anywhere_names_every_url_and_the_setting(server: FileServer, model_dir: Path) -> None:
    mirrors = [f"{server.url}/a/", f"{server.url}/b/"]
    server.serve("b/1b_lyrics/prior_level_2.pth.tar", b"", status=403)  # as a retired storage account answers
    with pytest.raises(NotFoundOnMirrors) as info:
        download_file("prior_1b_lyrics", model_dir, mirrors, options=quick(retries=3, backoff=10.0))
    message = str(info.value)
    assert message.startswith("prior_1b_lyrics not found on any mirror: tried ")
    assert (
        f"{server.url}/a/1b_lyrics/prior_level_2.pth.tar (HTTP 404), "
        f"{server.url}/b/1b_lyrics/prior_level_2.pth.tar (HTTP 403)" in message
    )
    assert "set JUKEBOT_MODEL_MIRRORS" in message
    assert len(server.hits) == 2  # a 404 is final: no retry rounds (and no 10 s backoff)


def test_a_stalled_server_times_out_with_a_clear_error(server: FileServer, model_dir: Path) -> None:
    data = tiny_checkpoint()
    server.serve(VQVAE_PATH, data, stall_after=4096, stall_seconds=2.0)
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"stalled, no data for 0.2 s after 4096 bytes"):
        download_file("vqvae", model_dir, [server.url], options=quick(read_timeout=0.2))
    assert time.monotonic() - started < 1.5
    assert (model_dir / (VQVAE_PATH + ".part")).stat().st_size == 4096


def test_a_server_that_ignores_range_restarts_the_file_cleanly(server: FileServer, model_dir: Path) -> None:
    data = tiny_checkpoint()
    part = model_dir / (VQVAE_PATH + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(b"stale bytes from elsewhere")
    server.serve(VQVAE_PATH, data, ignore_range=True)
    download_file("vqvae", model_dir, [server.url], verifier=shapes_verifier(), options=quick())
    assert (model_dir / VQVAE_PATH).read_bytes() == data
    (hit,) = server.hits
    assert hit.range == "bytes=26-" and hit.status == 200


def test_a_complete_part_file_is_finished_on_416(server: FileServer, model_dir: Path) -> None:
    data = tiny_checkpoint()
    part = model_dir / (VQVAE_PATH + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(data)
    server.serve(VQVAE_PATH, data)
    download_file("vqvae", model_dir, [server.url], verifier=shapes_verifier(), options=quick())
    assert (model_dir / VQVAE_PATH).read_bytes() == data
    assert [hit.status for hit in server.hits] == [416] and server.bytes_served(VQVAE_PATH) == 0


def test_a_part_file_larger_than_the_remote_file_starts_over(server: FileServer, model_dir: Path) -> None:
    data = tiny_checkpoint()
    part = model_dir / (VQVAE_PATH + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(data + b"junk")
    server.serve(VQVAE_PATH, data)
    download_file("vqvae", model_dir, [server.url], options=quick(retries=1))
    assert (model_dir / VQVAE_PATH).read_bytes() == data
    assert [(hit.range, hit.status) for hit in server.hits] == [(f"bytes={len(data) + 4}-", 416), (None, 200)]


def test_a_far_too_small_file_is_a_failed_mirror_not_a_download_to_resume(
    server: FileServer, model_dir: Path
) -> None:
    data = tiny_checkpoint()
    server.serve(f"a/{VQVAE_PATH}", data[:7000])  # far below the 12.4 KiB its weights take in fp16
    server.serve(f"b/{VQVAE_PATH}", data)
    messages: list[str] = []
    result = download_file(
        "vqvae",
        model_dir,
        [f"{server.url}/a/", f"{server.url}/b/"],
        verifier=shapes_verifier(),
        options=quick(retries=3, notify=messages.append),
    )
    assert result.url == f"{server.url}/b/{VQVAE_PATH}" and result.path.read_bytes() == data
    (from_b,) = server.hits_for(f"b/{VQVAE_PATH}")
    assert from_b.range is None  # refused from its headers: nothing of a's copy kept to resume
    assert len(server.hits_for(f"a/{VQVAE_PATH}")) == 1 and messages == []

    (model_dir / VQVAE_PATH).unlink()
    with pytest.raises(NotFoundOnMirrors) as info:
        download_file("vqvae", model_dir, [f"{server.url}/a/"], verifier=shapes_verifier(), options=quick())
    assert "serves 6.8 KiB, but a genuine vqvae is at least 12.4 KiB: a wrong or truncated copy" in str(
        info.value
    )
    # found, just not good: "not found" would send the operator looking for the file
    assert str(info.value).startswith("No good copy of vqvae on any mirror: tried ")
    assert str(info.value).endswith("or install one you have with `jukebot models import`.")
    assert not (model_dir / (VQVAE_PATH + ".part")).exists()


def test_download_a_model_fetches_its_checkpoints_only(server: FileServer, model_dir: Path) -> None:
    data = tiny_checkpoint()
    for name in MODELS["1b_lyrics"].checkpoints:
        server.serve(f"models/{CHECKPOINTS[name].path}", data)
    assert missing_checkpoints(model_dir, "1b_lyrics") == list(MODELS["1b_lyrics"].checkpoints)
    messages: list[str] = []
    report = download(
        "1b_lyrics",
        model_dir,
        [f"{server.url}/models/"],
        verifier=shapes_verifier(),
        options=quick(notify=messages.append),
    )
    # the total first, from one HEAD request per file; the id tables ship with the package
    assert messages == [f"4 file(s) to fetch, {4 * len(data) / 1024:.1f} KiB in all, into {model_dir}"]
    assert [hit.method for hit in server.hits] == ["HEAD"] * 4 + ["GET"] * 4
    assert [result.name for result in report.results] == list(MODELS["1b_lyrics"].checkpoints)
    assert all(result.downloaded for result in report.results) and report.failures == {}
    assert missing_checkpoints(model_dir, "1b_lyrics") == []
    assert (
        require_checkpoints(model_dir, "1b_lyrics")["prior_1b_lyrics"]
        == model_dir / "1b_lyrics/prior_level_2.pth.tar"
    )
    assert missing_checkpoints(model_dir, "5b") == ["prior_5b"]


def test_missing_files_error_names_the_command_that_fetches_them(tmp_path: Path) -> None:
    with pytest.raises(ModelFilesMissing) as info:
        require_checkpoints(tmp_path, "1b_lyrics")
    message = str(info.value)
    assert "Run `jukebot models download 1b_lyrics` to fetch them." in message
    assert (
        "vqvae (5b/vqvae.pth.tar)" in message
        and "prior_1b_lyrics (1b_lyrics/prior_level_2.pth.tar)" in message
    )
    assert info.value.missing == list(MODELS["1b_lyrics"].checkpoints)


def test_names_resolve_to_files_and_unknown_names_are_explained(tmp_path: Path) -> None:
    assert resolve_names("5b_lyrics") == [
        "vqvae",
        "upsampler_level_0",
        "upsampler_level_1",
        "prior_5b_lyrics",
    ]
    assert resolve_names("vqvae") == ["vqvae"]
    assert resolve_names("all") == list(CHECKPOINTS)
    assert model_path(tmp_path, "prior_5b") == tmp_path / "5b" / "prior_level_2.pth.tar"
    with pytest.raises(
        UnknownModelName, match="Unknown model or file '2b': use one of 5b, 5b_lyrics, 1b_lyrics"
    ):
        resolve_names("2b")
    with pytest.raises(UnknownModelName, match="Unknown model"):
        missing_checkpoints(tmp_path, "vqvae")


def test_verify_caches_results_by_size_and_mtime(model_dir: Path) -> None:
    path = model_path(model_dir, "vqvae")
    path.parent.mkdir(parents=True)
    path.write_bytes(tiny_checkpoint(prefix="module."))  # the loader strips DataParallel's prefix
    assert file_status("vqvae", model_dir).state == "present"
    result = verify_file("vqvae", model_dir, shapes_verifier())
    assert result.ok and result.message.startswith("OK  vqvae") and "keys and shapes match" in result.message
    assert file_status("vqvae", model_dir).state == "verified"
    path.write_bytes(tiny_checkpoint() + b"\0")  # changed on disk: the cached result no longer applies
    assert file_status("vqvae", model_dir).state == "present"


def test_verify_moves_a_bad_file_aside(model_dir: Path) -> None:
    path = model_path(model_dir, "vqvae")
    path.parent.mkdir(parents=True)
    bad = tiny_checkpoint({"something.else": (20_000,)})  # as large as a genuine copy, other keys
    path.write_bytes(bad)
    result = verify_file("vqvae", model_dir, shapes_verifier())
    assert not result.ok and result.moved_to == path.with_name("vqvae.pth.tar.corrupt")
    assert "3 missing keys" in result.message and "1 unexpected (something.else)" in result.message
    assert "Run `jukebot models download vqvae` to fetch it again." in result.message
    assert not path.exists() and result.moved_to.read_bytes() == bad
    assert file_status("vqvae", model_dir).state == "missing"


def test_without_expected_shapes_a_checkpoint_must_still_load(model_dir: Path) -> None:
    path = model_path(model_dir, "vqvae")
    path.parent.mkdir(parents=True)
    path.write_bytes(tiny_checkpoint())
    assert CheckpointVerifier().problems("vqvae", path) == []
    torch.save({"weights": {}}, path)
    (problem,) = CheckpointVerifier().problems("vqvae", path)
    assert "entry 'weights' is a dict, not a tensor; re-download it" in problem


def test_partial_download_shows_in_status(server: FileServer, model_dir: Path) -> None:
    server.serve(VQVAE_PATH, tiny_checkpoint(), drop_after=8192)
    with pytest.raises(DownloadError):
        download_file("vqvae", model_dir, [server.url], options=quick())
    status = file_status("vqvae", model_dir)
    assert status.state == "partial" and status.size == 8192


def test_progress_bar_is_drawn_only_when_asked(
    server: FileServer, model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server.serve(VQVAE_PATH, tiny_checkpoint())
    download_file("vqvae", model_dir, [server.url], options=quick(progress=True))
    assert "vqvae: 100%" in capsys.readouterr().err
    server.serve(CHECKPOINTS["prior_5b"].path, tiny_checkpoint())
    download_file("prior_5b", model_dir, [server.url], options=quick(progress=None))
    assert capsys.readouterr().err == ""  # stderr is not a terminal under pytest


def test_a_second_downloader_waits_for_the_first(server: FileServer, model_dir: Path) -> None:
    fcntl = pytest.importorskip("fcntl")
    data = tiny_checkpoint()
    server.serve(VQVAE_PATH, data)
    model_dir.mkdir()
    waiting = threading.Event()
    results: list[DownloadResult] = []

    def notify(message: str) -> None:
        if message.startswith("waiting for another download"):
            waiting.set()

    with open(model_dir / ".download.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as another process mid-download would
        worker = threading.Thread(
            target=lambda: results.append(
                download_file("vqvae", model_dir, [server.url], options=quick(notify=notify))
            )
        )
        worker.start()
        assert waiting.wait(timeout=10)
        assert server.hits == []  # nothing fetched while the lock is held
        fcntl.flock(held, fcntl.LOCK_UN)
    worker.join(timeout=10)
    assert results and results[0].downloaded and (model_dir / VQVAE_PATH).read_bytes() == data


def test_unreachable_mirrors_fail_fast_with_one_line_each_and_one_actionable_message(
    model_dir: Path,
) -> None:
    messages: list[str] = []
    refused = closed_port_url()
    with silent_server() as silent:
        started = time.monotonic()
        with pytest.raises(NoMirrorReachable) as info:
            download(
                "1b_lyrics",
                model_dir,
                [f"{refused}/models/", f"{silent}/models/"],
                verifier=shapes_verifier(),
                options=quick(
                    connect_timeout=0.5, read_timeout=0.5, retries=4, backoff=10.0, notify=messages.append
                ),
            )
        elapsed = time.monotonic() - started
    assert elapsed < 3  # one connect timeout for the silent host, no retry rounds, no backoff
    assert messages == [
        f"mirror {refused}/models/ cannot be reached (Connection refused); skipping it",
        f"mirror {silent}/models/ cannot be reached (no answer within 0.5 s); skipping it",
    ]
    message = str(info.value)
    assert message.startswith("No model mirror could be reached: ")
    assert "Check this machine's network connection" in message and "set JUKEBOT_MODEL_MIRRORS" in message
    assert not model_dir.exists() or not any(model_dir.rglob("*.part"))


def test_a_mirror_that_goes_down_mid_run_is_skipped_for_the_remaining_files(
    server: FileServer, model_dir: Path
) -> None:
    data = tiny_checkpoint()
    refused = closed_port_url()
    for name in MODELS["1b_lyrics"].checkpoints:
        server.serve(f"models/{CHECKPOINTS[name].path}", data)
    messages: list[str] = []
    report = download(
        "1b_lyrics",
        model_dir,
        [f"{refused}/", f"{server.url}/models/"],
        options=quick(notify=messages.append),
    )
    assert report.failures == {} and all(result.downloaded for result in report.results)
    assert sum("cannot be reached" in message for message in messages) == 1  # not once per file


class _Hyperparams(dict):  # type: ignore[type-arg]
    """Pickled under the original's class name, as training checkpoints carry their hparams."""


_Hyperparams.__module__, _Hyperparams.__qualname__ = "jukebox.hparams", "Hyperparams"


@pytest.mark.parametrize("layout", ["hparams_beside_the_weights", "bare_state_dict"])
def test_verify_and_sampling_give_one_verdict(tmp_path: Path, layout: str) -> None:
    from sampler.jukebox.checkpoint import load_checkpoint

    module = torch.nn.Linear(64, 96)
    state = {key: value.detach().clone() for key, value in module.state_dict().items()}
    path = tmp_path / "model.pth.tar"
    import sys
    import types

    fake = types.ModuleType("jukebox.hparams")
    fake.Hyperparams = _Hyperparams  # type: ignore[attr-defined]
    sys.modules.setdefault("jukebox", types.ModuleType("jukebox"))
    sys.modules["jukebox.hparams"] = fake
    try:
        payload = {"model": state, "hps": _Hyperparams(sr=44100)} if layout != "bare_state_dict" else state
        torch.save(payload, path)
    finally:
        del sys.modules["jukebox.hparams"]
    expected = {key: tuple(value.shape) for key, value in state.items()}
    verifier = CheckpointVerifier(expected_shapes_for=lambda name: expected)
    assert verifier.problems("vqvae", path) == []  # the verifier used to refuse both layouts
    load_checkpoint(torch.nn.Linear(64, 96), path)  # as sampling loads it
