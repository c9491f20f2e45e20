"""Keep a process's memory and environment from the other processes of its user.

Torch-free: `jukebot run` (the bot, which may run without torch), `jukebot worker` and every worker
process the pool spawns call it first. The setting does not survive `exec`, and `spawn` starts a
new program: each process sets it for itself.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger(__name__)

PR_SET_DUMPABLE = 4


def keep_memory_private(what: str = "this process") -> None:
    """Make this process undumpable (Linux): no other process of its user may read its memory or
    /proc/<pid>/environ, where the Discord token and the database password are. Above all not the
    audio decoder's child process, nor code in a downloaded checkpoint, should either be taken over.
    No core dumps either."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("could not make %s undumpable (errno %s)", what, ctypes.get_errno())
