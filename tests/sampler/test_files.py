"""`sampler.files.not_a_file`: what stands where a regular file is expected, for every command that
opens one by name."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from sampler.files import NotAFile, not_a_file


def test_a_regular_file_or_a_link_to_one_is_a_file(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_bytes(b"x")
    link = tmp_path / "link"
    link.symlink_to(real)
    assert not_a_file(real) is None and not_a_file(link) is None


def test_each_thing_that_is_no_regular_file_is_named(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "folder").mkdir()
    (tmp_path / "broken").symlink_to(tmp_path / "gone")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    listening = socket.socket(socket.AF_UNIX)
    try:
        listening.bind(str(tmp_path / "socket"))
        found = {name: not_a_file(tmp_path / name) for name in ("fifo", "folder", "broken", "loop", "socket")}
    finally:
        listening.close()
    assert found == {
        "fifo": NotAFile("a FIFO (named pipe)"),
        "folder": NotAFile("a folder"),
        "broken": NotAFile("a broken link", link_target=str(tmp_path / "gone")),
        "loop": NotAFile("a loop of links"),
        "socket": NotAFile("a socket"),
    }
    assert found["broken"] is not None and found["broken"].broken_link and not found["broken"].missing
    assert found["loop"] is not None and found["loop"].link_loop
    assert not_a_file(Path("/dev/null")) == NotAFile("a character device")


@pytest.mark.parametrize("relative", ["missing", "missing-folder/file", "file-as-folder/file"])
def test_nothing_there_is_missing(tmp_path: Path, relative: str) -> None:
    (tmp_path / "file-as-folder").write_bytes(b"x")
    found = not_a_file(tmp_path / relative)
    assert found is not None and found.missing
