"""A Postgres cluster of a test's own, which the test can stop and start again (a database outage).

Postgres refuses to run as root: as root the cluster runs as the `postgres` user, in a temp dir it
owns (see scripts/ensure-postgres.sh). Skipped where Postgres's server programs are not installed,
except under CI=true, where that is a failure.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest


def _server_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ThrowawayPostgres:
    """initdb + pg_ctl on a free port; `stop()`/`start()` take the database away and bring it back."""

    def __init__(self) -> None:
        bin_dir = _server_bin()
        if bin_dir is None:
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail("Postgres's server programs (initdb, pg_ctl) are not installed")
            pytest.skip("Postgres's server programs (initdb, pg_ctl) are not installed")
        self.bin_dir = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="jukebot-outage-pg-"))
        self.port = _free_port()
        self._as_owner: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            self._as_owner = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.root / "data"), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "jukebot")

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/jukebot"

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [*self._as_owner, str(self.bin_dir / program), *args],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        options = f"-c fsync=off -c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}"
        log = str(self.root / "log")
        self._run("pg_ctl", "-D", str(self.root / "data"), "-l", log, "-w", "-o", options, "start")

    def stop(self) -> None:
        """Stop at once: every connection is cut, as when the database server goes away."""
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")

    def destroy(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)
