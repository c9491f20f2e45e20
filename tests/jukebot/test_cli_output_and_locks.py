"""The operator command line where its output cannot be written (a reader that left, a full disk, a
closed stdout), where another process holds a lock (a worker's SQLite write lock, a Postgres row lock),
on SQLite paths that cannot be a database file, and `jobs prune --older-than`'s values."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import click
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import text

import storage.engine
from jukebot.cli import main
from jukebot.doctor import Verdict, check_database
from jukebot.settings import load_settings
from storage import JobStatus, JobStore, create_engine
from tests.conftest import FakeClock, _empty_postgres_database, _postgres_url
from tests.storage.helpers import enqueue
from tests.storage.test_retry_and_prune import WORKER

T = TypeVar("T")
REPO = Path(__file__).parents[2]
A_MONTH_AGO = datetime.now(UTC) - timedelta(days=30)


def with_store(url: str, action: Callable[[JobStore], Awaitable[T]]) -> T:
    async def run() -> T:
        engine = create_engine(url)
        try:
            return await action(JobStore(engine, clock=FakeClock(A_MONTH_AGO)))
        finally:
            await engine.dispose()

    return asyncio.run(run())


async def failed_job(store: JobStore, checkpoint: bytes | None = b"windows 1-7") -> int:
    job_id = await enqueue(store)
    claimed = await store.claim(WORKER, ["5b_lyrics"], lease_seconds=60)
    assert claimed is not None and claimed.id == job_id
    if checkpoint is not None:
        await store.save_checkpoint(job_id, WORKER, checkpoint)
    await store.fail(job_id, WORKER, "out of memory")
    return job_id


async def statuses(store: JobStore, ids: list[int]) -> list[JobStatus]:
    found = [await store.get_job(job_id) for job_id in ids]
    return [job.status for job in found if job is not None]


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def jukebot(*args: str, **popen: object) -> subprocess.CompletedProcess[str]:
    """The command line as an operator runs it: a process of its own (`popen`: where its stdout goes)."""
    popen.setdefault("stdout", subprocess.PIPE)
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [sys.executable, "-m", "jukebot", *args],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
        **popen,
    )


@pytest.fixture
def sqlite_file(clean_env: Path, sqlite_template: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A migrated SQLite file the command line uses; a writer waits at most 2 s for another's lock."""
    path = clean_env / "jukebot.sqlite3"
    shutil.copyfile(sqlite_template, path)
    monkeypatch.setenv("JUKEBOT_DATABASE_URL", f"sqlite:///{path}?timeout=2")
    return path


def url_of(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


# ---------------------------------------------------------------- a worker's SQLite write lock


@contextmanager
def write_lock_held(path: Path, job_id: int) -> Iterator[None]:
    """A writer holding SQLite's write lock, as a worker storing a checkpoint does, until the block ends."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("UPDATE jobs SET stage = 'held' WHERE id = ?", (job_id,))
        yield
        connection.execute("ROLLBACK")
    finally:
        connection.close()


def test_reading_commands_answer_while_a_worker_holds_the_write_lock(sqlite_file: Path) -> None:
    job_id = with_store(url_of(sqlite_file), failed_job)

    with write_lock_held(sqlite_file, job_id):
        listed = cli("jobs", "list")
        checked = cli("db", "check")
        dry = cli("jobs", "prune", "--older-than", "1", "--dry-run")
        doctor = check_database(load_settings())

    assert listed.exit_code == 0, listed.output
    assert listed.output.startswith(f"#{job_id} failed generate ")
    assert checked.exit_code == 0, checked.output
    assert "answers and is at the latest schema" in checked.output
    assert dry.exit_code == 0, dry.output
    assert dry.output.startswith("dry run: would drop the checkpoints of 1 job ")
    assert doctor.verdict is Verdict.OK, doctor.message


# ---------------------------------------------------------------- output that cannot be written


def test_cancel_handles_every_job_when_the_reader_has_left(sqlite_file: Path) -> None:
    ids = with_store(url_of(sqlite_file), lambda store: asyncio.gather(*(enqueue(store) for _ in range(5))))
    read, write = os.pipe()
    os.close(read)  # `| head -1` that has exited: the first line written fails with EPIPE
    try:
        result = jukebot("jobs", "cancel", *map(str, ids), stdout=write)
    finally:
        os.close(write)

    assert with_store(url_of(sqlite_file), lambda store: statuses(store, ids)) == [JobStatus.CANCELLED] * 5
    # click's quiet exit for a reader that left, after the work: no traceback, no database blamed.
    assert (result.returncode, result.stderr) == (1, "")


def test_output_to_a_full_disk_is_one_line(sqlite_file: Path) -> None:
    job_id = with_store(url_of(sqlite_file), failed_job)

    with open("/dev/full", "w") as full:
        result = jukebot("jobs", "list", stdout=full)

    assert result.returncode == 1
    assert result.stderr == (
        "Error: cannot write to standard output (No space left on device), so this command's output "
        "is missing or incomplete.\n"
    )
    cancelled = jukebot("jobs", "cancel", str(job_id), stdout=subprocess.DEVNULL)
    assert cancelled.returncode == 1 and "already finished" in cancelled.stderr


def _close_stdout() -> None:
    os.close(1)


def test_a_closed_stdout_is_no_silent_success(sqlite_file: Path) -> None:
    job_id = with_store(url_of(sqlite_file), enqueue)
    closed = "Error: cannot write to standard output (it is closed), so this command's output is missing or incomplete.\n"

    listed = jukebot("jobs", "list", stdout=None, preexec_fn=_close_stdout)
    cancelled = jukebot("jobs", "cancel", str(job_id), stdout=None, preexec_fn=_close_stdout)

    assert (listed.returncode, listed.stderr) == (1, closed)
    assert (cancelled.returncode, cancelled.stderr) == (1, closed)
    # The work is done before the results are written.
    assert with_store(url_of(sqlite_file), lambda store: statuses(store, [job_id])) == [JobStatus.CANCELLED]


# ---------------------------------------------------------------- a Postgres row lock


@pytest.fixture
async def postgres_url(
    request: pytest.FixtureRequest, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> str:
    url = _postgres_url(request.getfixturevalue("postgres_database"))
    await _empty_postgres_database(url)
    monkeypatch.setenv("JUKEBOT_DATABASE_URL", url)
    return url


@contextmanager
def row_locked(url: str, job_id: int) -> Iterator[None]:
    """Another process's transaction holding job `job_id`'s row lock until the block ends."""
    locked, release = threading.Event(), threading.Event()
    failures: list[BaseException] = []

    async def hold() -> None:
        engine = create_engine(url)
        try:
            async with engine.begin() as connection:
                await connection.execute(
                    text("SELECT id FROM jobs WHERE id = :id FOR UPDATE"), {"id": job_id}
                )
                locked.set()
                await asyncio.to_thread(release.wait)
        finally:
            await engine.dispose()

    def run() -> None:
        try:
            asyncio.run(hold())
        except BaseException as exc:  # reported by the test
            failures.append(exc)
            locked.set()

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert locked.wait(30) and not failures, failures
        yield
    finally:
        release.set()
        thread.join(30)
    assert not failures, failures


@pytest.mark.postgres
def test_retry_reports_the_jobs_retried_before_one_that_timed_out(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, locked, last = with_store(
        postgres_url, lambda store: asyncio.gather(failed_job(store), failed_job(store), failed_job(store))
    )
    monkeypatch.setattr(storage.engine, "POSTGRES_STATEMENT_TIMEOUT_SECONDS", 1.0)

    with row_locked(postgres_url, locked):
        result = cli("jobs", "retry", str(first), str(locked), str(last))

    assert result.exit_code == 1
    assert result.stdout == f"Job #{first} is queued again; it resumes from its checkpoint.\n"
    assert result.stderr == (
        f"Error: job #{locked} was not retried (it is failed); job #{last} was not tried: The database at {postgres_url} "
        "timed out: a statement waited over 1 s, e.g. for a lock another process holds (a stuck "
        "transaction: see pg_stat_activity), or the server did not answer within 10 s (a host or network "
        "gone silent); try again.\n"
    )
    assert with_store(postgres_url, lambda store: statuses(store, [first, locked, last])) == [
        JobStatus.QUEUED,
        JobStatus.FAILED,
        JobStatus.FAILED,
    ]


# ---------------------------------------------------------------- SQLite paths that are no file


@pytest.mark.parametrize("command", [["db", "upgrade"], ["db", "check"], ["jobs", "list"]])
def test_a_sqlite_path_that_cannot_be_a_database_is_named(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    target = clean_env / "gone" / "jukebot.sqlite3"
    dangling, loop, other, fifo = (
        clean_env / name for name in ("dangling.db", "loop.db", "other.db", "fifo.db")
    )
    dangling.symlink_to(target)
    loop.symlink_to(other)
    other.symlink_to(loop)
    os.mkfifo(fifo)
    expected = {
        dangling: (
            f"Error: DATABASE_URL's SQLite file {dangling} is a link to {target}, which does not exist "
            "(SQLite cannot create a file through it): point DATABASE_URL at the database file itself, "
            "or remove the link so that `jukebot db upgrade` creates a new database there.\n"
        ),
        loop: (
            f"Error: DATABASE_URL's SQLite file {loop} is a loop of links (a link that leads back to "
            "itself): fix or remove the link, or point DATABASE_URL at the database file itself.\n"
        ),
        fifo: (
            f"Error: DATABASE_URL's SQLite file {fifo} is a FIFO (named pipe), not a regular file: point "
            "DATABASE_URL at jukebot's database file, or at a new file name to start an empty one.\n"
        ),
    }
    for path, message in expected.items():
        monkeypatch.setenv("DATABASE_URL", f"sqlite:///{path}")
        result = cli(*command)
        assert (result.exit_code, result.output) == (1, message), path
        assert check_database(load_settings()).message == message.removeprefix("Error: ").strip()
    assert not target.parent.exists()


# ---------------------------------------------------------------- prune --older-than


@pytest.mark.parametrize("days", ["0", "-1", "-0.5", "nan", "-inf", "abc", "", "1e-12"])
def test_prune_refuses_a_bad_age_as_a_usage_error(sqlite_file: Path, days: str) -> None:
    job_id = with_store(url_of(sqlite_file), failed_job)

    result = cli("jobs", "prune", "--older-than", days)

    assert result.exit_code == 2
    assert result.output.startswith("Usage: main jobs prune [OPTIONS]\n")
    assert result.output.splitlines()[-1].startswith("Error: Invalid value for '--older-than': ")
    assert repr(days) in result.output or "under a microsecond" in result.output
    assert with_store(url_of(sqlite_file), lambda store: store.get_checkpoint(job_id)) == b"windows 1-7"


@pytest.mark.parametrize("days", ["1e308", "1e309", "inf", "Infinity"])
def test_prune_older_than_any_job_can_be_prunes_nothing(sqlite_file: Path, days: str) -> None:
    """A number of days too large for a timedelta is the most one holds, whether or not it overflows a
    float (`1e309` is inf): no job is that old."""
    job_id = with_store(url_of(sqlite_file), failed_job)

    result = cli("jobs", "prune", "--older-than", days)

    assert (result.exit_code, result.output) == (
        0,
        "dropped the checkpoints of 0 jobs (0 bytes) and the audio of 0 prime clips (0 bytes): 0 bytes freed\n",
    )
    assert with_store(url_of(sqlite_file), lambda store: store.get_checkpoint(job_id)) == b"windows 1-7"
    assert cli("jobs", "prune", "--older-than", "1").output.startswith("dropped the checkpoints of 1 job ")


def test_the_vacuum_hint_quotes_the_path(
    clean_env: Path, sqlite_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = clean_env / "sp ace"
    folder.mkdir()
    path = folder / "j.db"
    shutil.copyfile(sqlite_template, path)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{path}")
    with_store(url_of(path), failed_job)

    result = cli("jobs", "prune", "--older-than", "1")

    assert result.exit_code == 0, result.output
    assert f"only after `sqlite3 '{path}' VACUUM`, run while jukebot is stopped" in result.output


# ---------------------------------------------------------------- --help


def test_every_flag_with_a_default_shows_it() -> None:
    """The README: `jukebot COMMAND --help` lists every flag with its default. The worker's timings
    (which fall back on settings) and `sample`'s --top_k/--top_p showed none (operator audit)."""

    def commands(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from commands(sub, (*path, name))
        else:
            yield path

    silent = []
    for path in commands(main):
        command = main
        for name in path:
            assert isinstance(command, click.Group)
            command = command.commands[name]
        for option in command.params:
            given_or_none = not isinstance(option.default, str | int | float | tuple)  # (bool is an int)
            if not isinstance(option, click.Option) or option.required or given_or_none:
                continue
            if option.is_flag and not option.secondary_opts:
                continue  # off unless given
            if option.show_default or "default" in (option.help or "").lower():
                continue
            silent.append(f"{' '.join(path)} {option.opts[0]}")
    assert silent == []
    flat = " ".join(cli("worker", "--help").output.split())
    assert "[default: (JUKEBOT_WORKER_LEASE_SECONDS, else 60)" in flat, flat


# ---------------------------------------------------------------- retry --help


def test_retry_help_names_every_refusal() -> None:
    result = cli("jobs", "retry", "--help")

    assert result.exit_code == 0
    flat = " ".join(result.output.split())
    assert "cancelled because the bot was removed" not in flat
    for refusal in (
        "a job that is not failed or cancelled",
        "one whose prime clip was pruned",
        "an upsample another job already covers",
        "a job of a server the bot was removed from, until the bot is in it again",
    ):
        assert refusal in flat, refusal
    assert re.search(r"Exits 1 when any was refused", flat)


def test_an_output_error_is_not_blamed_on_the_database(sqlite_file: Path) -> None:
    from jukebot.commands import database_problem

    settings = load_settings()
    read, write = os.pipe()
    os.close(read)
    try:
        # Unbuffered: nothing is left to flush (and fail again) when the file closes.
        with (
            open(write, "wb", buffering=0, closefd=False) as gone,
            pytest.raises(BrokenPipeError) as from_output,
        ):
            click.echo(b"Job #1 is cancelled.", file=gone)
    finally:
        os.close(write)

    assert database_problem(from_output.value, settings) is None
    refused = database_problem(ConnectionRefusedError(111, "Connection refused"), settings)
    assert refused is not None and refused.startswith("Cannot reach the database at ")
    assert database_problem(BrokenPipeError(32, "Broken pipe"), settings) is not None  # the database's socket
