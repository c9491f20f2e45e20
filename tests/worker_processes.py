"""Worker processes as tests start them: `python -m sampler.worker.pool` or `jukebot worker`, each
with its log in a file, waited on through bounded polls of that log or the database (never a sleep).

Shared by the pool tests (toy runner) and the end-to-end tests (the real cascade on tiny models).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from storage import JobStore
from storage.records import Job
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[1]
USER = 333_333_333_333_333_333
CHANNEL = 222_222_222_222_222_222
# Quick polls; leases long enough for a loaded machine (a killed worker's job comes back through its
# restarted worker at once, not through the lease).
FAST_FLAGS = [
    "--lease-seconds", "30",
    "--poll-seconds", "0.05",
    "--max-poll-seconds", "0.2",
    "--progress-seconds", "0.1",
    "--cancel-poll-seconds", "0.1",
    "--requeue-seconds", "0.3",
    "--restart-backoff", "0.1",
    "--shutdown-timeout", "30",
]  # fmt: skip


def repo_environment(extra: Mapping[str, str] = {}) -> dict[str, str]:
    """This process's environment with the repository first on the import path, plus `extra`."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ) | {"PYTHONPATH": path} | dict(extra)


def pool_command(db_url: str, runner: str, extra: list[str] | None = None) -> list[str]:
    """`python -m sampler.worker.pool` with one CPU worker and the fast test intervals."""
    command = [sys.executable, "-m", "sampler.worker.pool", "--database-url", db_url, "--runner", runner]
    return [*command, "--devices", "cpu", *FAST_FLAGS, *(extra or [])]


class ServiceProcess:
    """One worker process (a pool or `jukebot worker`) and its log file."""

    def __init__(self, command: list[str], env: dict[str, str], log_file: Path, cwd: Path = REPO) -> None:
        self.log_file = log_file
        with open(log_file, "ab") as output:
            self.process = subprocess.Popen(
                command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT
            )

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    async def ready(self, workers: int = 1, within: float = 90) -> None:
        """Wait until its workers serve (they log it once their runner is built)."""

        async def serving() -> bool:
            assert self.process.poll() is None, f"{self.log_file.name} exited early:\n{self.log()}"
            return self.log().count("serving models") >= workers

        await wait_until(serving, within, f"the workers of {self.log_file.name} to start")

    async def terminate(self, signum: int = signal.SIGTERM, within: float = 60) -> int:
        self.process.send_signal(signum)
        return await asyncio.to_thread(self.process.wait, within)

    async def stop(self, within: float = 60) -> None:
        """Stop it if it still runs (SIGTERM, then SIGKILL) and print the end of its log."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                await asyncio.to_thread(self.process.wait, within)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        print(f"---- {self.log_file.name}\n{self.log()[-6000:]}")


async def job_finished(store: JobStore, job_id: int, within: float = 60) -> Job:
    """The job once it has finished (succeeded, failed or cancelled)."""

    async def check() -> Job | None:
        job = await store.get_job(job_id)
        return job if job.finished else None

    return await wait_until(check, within, f"job #{job_id} to finish")
