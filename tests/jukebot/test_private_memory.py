"""The bot's process holds the Discord token and the database password; the audio decoder's child,
which a hostile attachment might take over, runs as the same user and could read them from
/proc/<bot pid>/environ. `jukebot run` now makes its process undumpable, which the kernel answers by
closing its /proc files and memory to other processes of the user."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.worker_processes import repo_environment

PR_GET_DUMPABLE = 3
ASK = (
    "import ctypes\n"
    "from jukebot.commands.serve import keep_memory_private\n"
    "libc = ctypes.CDLL(None)\n"
    f"before = libc.prctl({PR_GET_DUMPABLE}, 0, 0, 0, 0)\n"
    "keep_memory_private()\n"
    f"print(before, libc.prctl({PR_GET_DUMPABLE}, 0, 0, 0, 0))\n"
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_the_bot_makes_its_process_undumpable() -> None:
    done = subprocess.run(
        [sys.executable, "-c", ASK], env=repo_environment({}), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "0"]


def test_jukebot_run_does_so_before_it_reads_its_settings() -> None:
    from jukebot.commands import serve

    source = serve.run.callback.__code__.co_names  # type: ignore[union-attr]
    assert "keep_memory_private" in source


def test_jukebot_worker_does_so_too() -> None:
    """Its pool process's environment holds the database password (review of the deployment)."""
    from jukebot.commands import serve

    assert "keep_memory_private" in serve.worker.callback.__code__.co_names  # type: ignore[union-attr]
