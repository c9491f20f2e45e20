"""The checkpoint reader on files that are not good checkpoints: it says what is wrong with the file and
never passes on torch's advice to load it again without `weights_only` (which would run any code a file
from the internet carries); a path that is not a regular file is said to be what it is."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from sampler.jukebox.checkpoint import CheckpointError, load_hf_checkpoint, read_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("single_thread")

UNSAFE_ADVICE = ("weights_only", "arbitrary code", "trusted source", "file an issue", "Re-running")


class _RunsACommand:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo this should never run",))


def _tiny_checkpoint(path: Path) -> Path:
    return save_checkpoint({"a.weight": torch.ones(64, 64), "a.bias": torch.zeros(64)}, path)


def _corrupt_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    files["random bytes"] = folder / "random.pth.tar"
    files["random bytes"].write_bytes(bytes(range(256)) * 40)
    files["random bytes behind a pickle header"] = folder / "pickle_header.pth.tar"
    files["random bytes behind a pickle header"].write_bytes(b"\x80\x02" + bytes(range(35, 256)) * 20)
    good = _tiny_checkpoint(folder / "good.pth.tar").read_bytes()
    files["a truncated tiny checkpoint"] = folder / "truncated.pth.tar"
    files["a truncated tiny checkpoint"].write_bytes(good[: len(good) // 3])
    files["a plain pickle of os.system"] = folder / "plain_pickle.pth.tar"
    files["a plain pickle of os.system"].write_bytes(pickle.dumps({"model": _RunsACommand()}, protocol=4))
    files["a protocol 2 pickle of os.system"] = folder / "pickle2.pth.tar"
    files["a protocol 2 pickle of os.system"].write_bytes(
        pickle.dumps({"model": _RunsACommand()}, protocol=2)
    )
    files["torch.save of os.system"] = folder / "torch_save.pth.tar"
    torch.save({"model": _RunsACommand()}, files["torch.save of os.system"])
    files["a plain pickle of an arbitrary object"] = folder / "object.pth.tar"
    files["a plain pickle of an arbitrary object"].write_bytes(pickle.dumps({"model": {1, 2, 3}}, protocol=4))
    return files


def test_no_corrupt_file_gets_torchs_advice_to_load_it_unsafely(tmp_path: Path) -> None:
    for what, path in _corrupt_files(tmp_path).items():
        with pytest.raises(CheckpointError) as caught:
            read_checkpoint(path, name="vqvae")
        message = str(caught.value)
        for advice in UNSAFE_ADVICE:
            assert advice.lower() not in message.lower(), (what, message)
        assert str(path) in message and "\n" not in message, (what, message)
        assert "jukebot models download vqvae" in message, (what, message)


def test_a_damaged_pickle_keeps_a_short_technical_cause(tmp_path: Path) -> None:
    files = _corrupt_files(tmp_path)
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(files["a plain pickle of os.system"])
    assert "corrupt or not a checkpoint (UnpicklingError: unsupported pickle opcode " in str(caught.value)
    with pytest.raises(CheckpointError, match=r"carries a Python object \(posix\.system\)"):
        read_checkpoint(files["torch.save of os.system"])


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("fifo", "is a FIFO (named pipe), not a checkpoint file"),
        ("folder", "is a folder, not a checkpoint file"),
        ("broken link", "is a broken symbolic link (to "),
        ("link loop", "is a symbolic link loop"),
    ],
)
def test_a_path_that_is_not_a_regular_file_is_said_to_be_what_it_is(
    tmp_path: Path, kind: str, said: str
) -> None:
    path = tmp_path / "vqvae.pth.tar"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "broken link":
        path.symlink_to(tmp_path / "gone.pth.tar")
    else:
        path.symlink_to(path)
    with pytest.raises(CheckpointError) as caught:
        read_checkpoint(path, name="vqvae")
    message = str(caught.value)
    assert f"{path} {said}" in message
    assert "does not exist" not in message.replace("which does not exist", "")


def test_an_hf_index_naming_no_shard_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {}}))
    (tmp_path / "pytorch_model-00001-of-00001.bin").write_bytes(bytes(range(256)) * 16)
    with pytest.raises(CheckpointError, match="its weight_map is empty"):
        load_hf_checkpoint(tmp_path)
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": ["a"]}))
    with pytest.raises(CheckpointError, match="is not a valid shard index"):
        load_hf_checkpoint(tmp_path)


def test_a_damaged_sampling_state_is_refused_without_torchs_advice() -> None:
    """A saved state carrying a Python object (a damaged or planted checkpoint row or file): the
    refusal says it is unreadable, and never that loading it without weights_only would work."""
    import io

    from sampler.jukebox.cascade import CascadeState, SamplingError

    planted = io.BytesIO()
    torch.save({"format": 1, "run": os.system}, planted)
    with pytest.raises(SamplingError, match="the saved sampling state is unreadable") as refused:
        CascadeState.from_bytes(planted.getvalue())
    assert not re.search("weights.only|arbitrary code", str(refused.value), re.IGNORECASE), refused.value


def _state_bytes(**fields: object) -> bytes:
    """A saved sampling state as `CascadeState.to_bytes` lays it out, with `fields` changed."""
    import io

    saved: dict[str, object] = {
        "format": 1,
        "codes": [torch.zeros(1, 0, dtype=torch.int16)] * 2 + [torch.zeros(1, 8, dtype=torch.int16)],
        "level_base": {2: 0},
        "windows_done": {2: 1},
        "rng_state": None,
        "request_digest": None,
    }
    saved.update(fields)
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    return buffer.getvalue()


def test_a_compressed_sampling_state_is_refused_before_it_is_unpacked() -> None:
    """torch's reader inflates a deflated entry: 400 KB of state could unpack to gigabytes of codes."""
    import io
    import zipfile

    from sampler.jukebox.cascade import CascadeState, SamplingError

    genuine = _state_bytes()
    assert len(CascadeState.from_bytes(genuine).codes[2][0]) == 8
    repacked = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(genuine)) as source, zipfile.ZipFile(repacked, "w") as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info), compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(SamplingError, match=r"holds compressed entries \(.*\), which states never have"):
        CascadeState.from_bytes(repacked.getvalue())


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        # one stored value viewed ten million times: 80 MB once widened to int64
        (
            {"codes": [torch.zeros(1, 1, dtype=torch.int16).expand(1, 10**7)] * 3},
            r"codes claim more values than its [\d,]+ bytes hold",
        ),
        ({"codes": [torch.full((1, 4), 0.7)] * 3}, "level-0 codes are torch.float32, not whole numbers"),
        ({"codes": "codes"}, "codes are a str, not a list of tensors"),
        ({"level_base": {2: 0.5}}, "level_base holds 0.5, not a count"),
        ({"windows_done": {2: True}}, "windows_done holds True, not a count"),
    ],
)
def test_a_sampling_state_that_is_not_one_to_resume_is_refused(
    fields: dict[str, object], reason: str
) -> None:
    from sampler.jukebox.cascade import CascadeState, SamplingError

    with pytest.raises(SamplingError, match=f"^the saved sampling state('s| is damaged: its) {reason}"):
        CascadeState.from_bytes(_state_bytes(**fields))
