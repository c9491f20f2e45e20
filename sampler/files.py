"""What stands at a path where a regular file is expected: one answer for every command that opens
a file by name (a model checkpoint, a codes file, a clip, the SQLite database), each of which words
its own advice. Reading a FIFO would wait forever; a link to nothing or a loop of links fails with
an error that names neither."""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

# How `stat` calls what is neither a regular file nor a link, with the words for it.
_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


@dataclass(frozen=True)
class NotAFile:
    """Something at a path that is not a regular file (nor a link to one)."""

    what: str  # "a folder", "a FIFO (named pipe)", …, "a broken link", "a loop of links", "nothing"
    link_target: str | None = None  # where a broken link points

    @property
    def missing(self) -> bool:
        """Nothing there: no such file, or a folder on the way missing."""
        return self.what == "nothing"

    @property
    def broken_link(self) -> bool:
        return self.link_target is not None

    @property
    def link_loop(self) -> bool:
        return self.what == "a loop of links"


def not_a_file(path: Path) -> NotAFile | None:
    """What is at `path` when it is something other than a regular file (or a link to one), nothing
    at all included; None for a regular file. Any other OSError (a folder on the way that cannot be
    entered) is raised."""
    try:
        mode = path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        if os.path.islink(path):
            return NotAFile("a broken link", link_target=os.readlink(path))
        return NotAFile("nothing")
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return NotAFile("a loop of links")
        raise
    if stat.S_ISREG(mode):
        return None
    return NotAFile(next((what for test, what in _KINDS if test(mode)), "not a regular file"))


def on_read_only_mount(path: Path) -> bool:
    """Whether `path` (something that exists) is on a file system mounted read-only, where no change
    of permissions lets anyone write (False where that cannot be told)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False
