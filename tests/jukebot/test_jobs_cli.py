"""`jukebot jobs list | retry | prune`, through the command line, on a SQLite database file."""

from __future__ import annotations

import asyncio
import shutil
import socket
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from click.testing import CliRunner, Result
from sqlalchemy.engine import make_url

from jukebot.cli import main
from storage import JobKind, JobStatus, JobStore, create_engine
from tests.conftest import FakeClock
from tests.storage.helpers import MODEL, USER, enqueue, finished_job

T = TypeVar("T")
WORKER = "worker-a"
# The command line runs on the real clock: jobs made by this one finished a month ago.
A_MONTH_AGO = datetime.now(UTC) - timedelta(days=30)


@pytest.fixture
def database(clean_env: Path, sqlite_template: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A migrated SQLite file that the command line uses (JUKEBOT_DATABASE_URL); its URL."""
    path = clean_env / "jukebot.sqlite3"
    shutil.copyfile(sqlite_template, path)
    url = f"sqlite+aiosqlite:///{path}"
    monkeypatch.setenv("JUKEBOT_DATABASE_URL", url)
    return url


def with_store(url: str, action: Callable[[JobStore], Awaitable[T]], clock: FakeClock | None = None) -> T:
    async def run() -> T:
        engine = create_engine(url)
        try:
            return await action(JobStore(engine, clock=clock or FakeClock(A_MONTH_AGO)))
        finally:
            await engine.dispose()

    return asyncio.run(run())


async def failed_job(store: JobStore, checkpoint: bytes | None, reason: str, **fields: object) -> int:
    job_id = await enqueue(store, **fields)
    claimed = await store.claim(WORKER, [MODEL], lease_seconds=60)
    assert claimed is not None and claimed.id == job_id
    if checkpoint is not None:
        await store.save_checkpoint(job_id, WORKER, checkpoint)
    await store.fail(job_id, WORKER, reason)
    return job_id


def jobs(*args: str) -> Result:
    return CliRunner().invoke(main, ["jobs", *args])


# ---------------------------------------------------------------------------- list


def test_list_shows_the_newest_jobs_one_line_each(database: str) -> None:
    reason = "CUDA out of memory\n  at level 1, window 3\n" + "x" * 500

    async def make(store: JobStore) -> tuple[int, int, int, int]:
        failed = await failed_job(store, b"codes", reason, guild_id=None)
        done, _ = await finished_job(store)
        cancelled = await enqueue(store, kind=JobKind.GENERATE, model="5b")
        await store.request_cancel(cancelled, USER)
        queued = await enqueue(store, model="1b_lyrics")
        return failed, done, cancelled, queued

    failed, done, cancelled, queued = with_store(database, make)
    created = A_MONTH_AGO.strftime("%Y-%m-%dT%H:%M:%SZ")

    listed = jobs("list")

    assert listed.exit_code == 0, listed.output
    lines = listed.output.splitlines()
    assert [line.split()[0] for line in lines] == [f"#{queued}", f"#{cancelled}", f"#{done}", f"#{failed}"]
    assert lines[0] == (
        f"#{queued} queued generate 1b_lyrics guild=111111111111111111 user={USER} created={created} "
        "attempts=0/3 checkpoint=no"
    )
    assert lines[1].startswith(f"#{cancelled} cancelled generate 5b ") and "error" not in lines[1]
    assert lines[2].startswith(f"#{done} succeeded generate 5b_lyrics ") and lines[2].endswith(
        "checkpoint=no"
    )
    head, error = lines[3].split(" error: ")
    assert head == (
        f"#{failed} failed generate 5b_lyrics guild=DM user={USER} created={created} attempts=0/3 "
        "checkpoint=yes"
    )
    assert error.startswith("CUDA out of memory at level 1, window 3 xxx") and error.endswith("…")
    assert len(error) == 160

    only_failed = jobs("list", "--status", "failed")
    assert only_failed.exit_code == 0 and only_failed.output.splitlines() == [lines[3]]
    newest = jobs("list", "--limit", "2")
    assert newest.exit_code == 0 and newest.output.splitlines() == lines[:2]
    none = jobs("list", "--status", "running")
    assert (none.exit_code, none.output) == (0, "no running jobs\n")


def test_list_creates_no_database(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = clean_env / "not-yet" / "jukebot.sqlite3"
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{missing}")

    listed = jobs("list")

    assert listed.exit_code == 1
    assert listed.output == (
        f"Error: the database at sqlite+aiosqlite:///{missing} does not exist yet, so it holds no jobs: "
        "run `jukebot db upgrade`, which creates it (jukebot run and jukebot worker do on start)\n"
    )
    assert not missing.parent.exists()
    # `jukebot workers` says what that means for workers (it said "so it holds no jobs" too)
    listed = CliRunner().invoke(main, ["workers"])
    assert listed.exit_code == 1 and "does not exist yet, so no worker has used it: run " in listed.output
    assert not missing.parent.exists()


@pytest.mark.usefixtures("postgres_database")
def test_a_server_without_ssl_asked_for_ssl_is_named_so(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was "Cannot reach the database … start it", of a server that answers (found by an audit)."""
    from tests.conftest import POSTGRES_URL

    monkeypatch.setenv("DATABASE_URL", f"{POSTGRES_URL}?sslmode=require")
    for command in (["jobs", "list"], ["db", "check"], ["db", "upgrade"]):
        result = CliRunner().invoke(main, command)
        if result.exit_code == 0:
            pytest.skip("this Postgres takes SSL")
        assert "does not take SSL (" in result.output, result.output
        assert "set sslmode=prefer or sslmode=disable in DATABASE_URL" in " ".join(result.output.split())
        assert "start it" not in result.output and result.output.count("\n") == 1, result.output
    # verify-full without the root certificate it reads: the same sentence from every command, and
    # not "start it" either (db check and jobs said so)
    monkeypatch.setenv("HOME", str(clean_env))
    monkeypatch.setenv("DATABASE_URL", f"{POSTGRES_URL}?sslmode=verify-full")
    for command in (["jobs", "list"], ["db", "check"], ["db", "upgrade"]):
        result = CliRunner().invoke(main, command)
        said = " ".join(result.output.split())
        assert result.exit_code == 1 and "failed: root certificate file " in said, result.output
        assert "start it" not in said, result.output


def test_a_database_not_migrated_says_to_upgrade(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = clean_env / "empty.sqlite3"
    sqlite3.connect(empty).close()
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{empty}")

    for args in (["list"], ["retry", "1"], ["prune", "--older-than", "1"]):
        result = jobs(*args)
        assert result.exit_code == 1, args
        assert (
            "is at schema none (no jukebot tables yet), not " in result.output
            and "run `jukebot db upgrade`" in result.output
        )
        assert result.output.count("\n") == 1, result.output


def test_an_unreachable_database_is_one_sentence(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("DATABASE_URL", f"postgresql://jukebot:s3cret@127.0.0.1:{port}/jukebot")

    listed = jobs("list")

    assert listed.exit_code == 1
    assert listed.output.startswith(
        f"Error: Cannot reach the database at postgresql+asyncpg://jukebot:***@127.0.0.1:{port}/jukebot ("
    )
    assert listed.output.endswith("): start it or fix DATABASE_URL.\n")  # what to do, as `db upgrade` says
    assert "s3cret" not in listed.output and listed.output.count("\n") == 1


# ---------------------------------------------------------------------------- retry


def test_cancel_stops_anyones_queued_or_running_jobs_and_names_the_others(database: str) -> None:
    async def make(store: JobStore) -> tuple[int, int, int]:
        done, _ = await finished_job(store)
        running = await enqueue(store)
        assert (await store.claim(WORKER, [MODEL], lease_seconds=60)) is not None
        queued = await enqueue(store, user_id=USER + 1)
        return running, queued, done

    running, queued, done = with_store(database, make, FakeClock(datetime.now(UTC)))  # a live lease
    huge = str(2**64)  # past the id column's range (Postgres: int4; SQLite: 64 bits)
    result = jobs("cancel", str(queued), str(running), str(done), "999", huge, str(queued))

    assert result.exit_code == 1
    assert result.output == (
        f"Job #{queued} is cancelled.\n"
        f"Job #{running} stops after its current step.\n"
        f"Job #{done} was not cancelled: it has already finished (succeeded).\n"
        "Job #999 was not cancelled: there is no such job.\n"
        f"Job #{huge} was not cancelled: there is no such job.\n"
        "Error: 3 of 5 jobs not cancelled (see above).\n"
    )

    async def states(store: JobStore) -> list[tuple[JobStatus, str | None]]:
        found = [await store.get_job(job_id) for job_id in (running, queued, done)]
        return [(job.status, job.error) for job in found]

    assert with_store(database, states) == [
        (JobStatus.CANCELLING, "by the operator"),  # its progress message says who
        (JobStatus.CANCELLED, "by the operator"),
        (JobStatus.SUCCEEDED, None),
    ]


def test_cancel_ends_at_once_a_running_job_whose_worker_is_gone(database: str) -> None:
    """Its worker was killed a month ago: no step to stop after, and no bot or worker running to
    find its lease over. It stayed `cancelling` while the command said it 'stops after its step'."""

    async def running(store: JobStore, worker: str) -> int:
        job_id = await enqueue(store)
        claimed = await store.claim(worker, [MODEL], lease_seconds=600)
        assert claimed is not None and claimed.id == job_id
        return job_id

    alive = with_store(database, lambda store: running(store, "worker-b"), FakeClock(datetime.now(UTC)))
    gone = with_store(database, lambda store: running(store, WORKER))  # its lease ran out a month ago
    result = jobs("cancel", str(gone), str(alive))
    assert (result.exit_code, result.output) == (
        0,
        f"Job #{gone} is cancelled (its worker had stopped renewing its lease: it is gone).\n"
        f"Job #{alive} stops after its current step.\n",
    ), result.output

    async def states(store: JobStore) -> list[JobStatus]:
        return [(await store.get_job(job_id)).status for job_id in (gone, alive)]

    assert with_store(database, states) == [JobStatus.CANCELLED, JobStatus.CANCELLING]


@pytest.mark.parametrize(
    ("given", "said"),
    [
        ("-1", "'-1' is no job id: ids start at 1"),  # not "No such option '-1'"
        (
            "1" * 5000,
            "111111111111111111111111111111111111111111111111111111111111… (5,000 characters) is no job id: no job has an id of 5,000 digits",
        ),
    ],
)
@pytest.mark.parametrize("command", ["cancel", "retry"])
def test_an_id_that_cannot_be_one_is_a_usage_error(
    database: str, command: str, given: str, said: str
) -> None:
    result = jobs(command, given)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"Invalid value for 'ID...': {said}" in " ".join(result.output.split()), result.output


def _lost_as_it_commits(monkeypatch: pytest.MonkeyPatch, name: str, reread: bool) -> None:
    """The connection drops as `JobStore.<name>` commits: the change is made, the command hears an error
    (and, without `reread`, reading the job again fails too: the database is gone)."""
    from sqlalchemy.exc import OperationalError

    real = getattr(JobStore, name)
    lost = OperationalError(
        "COMMIT", None, ConnectionResetError("connection was closed in the middle of operation")
    )

    async def committed_then_lost(self: JobStore, job_id: int, *args: object, **kwargs: object) -> object:
        await real(self, job_id, *args, **kwargs)
        if not reread:
            monkeypatch.setattr(JobStore, "get_job", lambda *_args, **_kwargs: _raise(lost))
        raise lost

    monkeypatch.setattr(JobStore, name, committed_then_lost)


async def _raise(error: Exception) -> None:
    raise error


@pytest.mark.parametrize("reread", [True, False], ids=["read again", "database gone"])
def test_a_change_committed_as_the_connection_dropped_is_not_called_undone(
    database: str, monkeypatch: pytest.MonkeyPatch, reread: bool
) -> None:
    first, second = with_store(database, lambda store: asyncio.gather(enqueue(store), enqueue(store)))
    _lost_as_it_commits(monkeypatch, "request_cancel", reread)
    result = jobs("cancel", str(first), str(second))
    assert result.exit_code == 1
    said = (
        f"job #{first} was cancelled (it is cancelled)"
        if reread
        else f"whether job #{first} was cancelled is unknown (the database did not answer again: "
        "`jukebot jobs list` shows it once it does)"
    )
    assert result.output.startswith(f"Error: {said}; job #{second} was not tried: "), result.output
    monkeypatch.undo()

    async def states(store: JobStore) -> list[JobStatus]:
        return [(await store.get_job(job_id)).status for job_id in (first, second)]

    assert with_store(database, states) == [JobStatus.CANCELLED, JobStatus.QUEUED]


def test_retry_queues_failed_and_cancelled_jobs_and_refuses_the_others(database: str) -> None:
    async def make(store: JobStore) -> tuple[int, int, int, int]:
        failed = await failed_job(store, b"windows 1-7", "out of memory")
        cancelled = await enqueue(store)
        await store.request_cancel(cancelled, USER)
        done, _ = await finished_job(store)
        queued = await enqueue(store, model="5b")
        return failed, cancelled, done, queued

    failed, cancelled, done, queued = with_store(database, make)

    result = jobs("retry", str(failed), str(queued), str(cancelled), "424242", str(done), str(failed))

    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"Job #{failed} is queued again; it resumes from its checkpoint.",
        f"Job #{cancelled} is queued again; it starts over (it has no checkpoint).",
    ]
    assert result.stderr.splitlines() == [
        f"Job #{queued} was not retried: it is queued (only a failed or cancelled job can be).",
        "Job #424242 was not retried: there is no such job.",
        f"Job #{done} was not retried: it succeeded (only a failed or cancelled job can be).",
        "Error: 3 of 5 jobs were not retried (see above).",
    ]

    async def read(store: JobStore) -> list[tuple[JobStatus, str | None]]:
        return [
            ((job := await store.get_job(i)).status, job.error) for i in (failed, cancelled, done, queued)
        ]

    assert with_store(database, read) == [
        (JobStatus.QUEUED, None),
        (JobStatus.QUEUED, None),
        (JobStatus.SUCCEEDED, None),
        (JobStatus.QUEUED, None),
    ]
    live = FakeClock(datetime.now(UTC))
    claimed = with_store(database, lambda store: store.claim("worker-b", [MODEL], lease_seconds=60), live)
    assert claimed is not None and (claimed.id, claimed.checkpoint) == (failed, b"windows 1-7")

    again = jobs("retry", str(failed))
    assert again.exit_code == 1
    assert again.stderr == (
        f"Job #{failed} was not retried: it is running (only a failed or cancelled job can be).\n"
        "Error: the job was not retried (see above).\n"
    )


def test_retry_queues_a_running_job_whose_lease_ran_out_at_once(database: str) -> None:
    """Its worker was killed and no bot or worker runs to find its lease over: retry said "it is
    running" of a job nothing ran, until one did. Then retry refused a lease nobody had yet seen run
    out, for a lease more (the grace a worker only cut off from the database gets), so the operator
    who knew the worker died had to run it twice. Now a lease that ran out is recovered at once,
    seen before or not; a live lease is still refused."""

    async def running(store: JobStore, worker: str, checkpoint: bytes | None) -> int:
        job_id = await enqueue(store)
        claimed = await store.claim(worker, [MODEL], lease_seconds=600)
        assert claimed is not None and claimed.id == job_id
        if checkpoint is not None:
            await store.save_checkpoint(job_id, worker, checkpoint)
        return job_id

    live = FakeClock(datetime.now(UTC))
    alive = with_store(database, lambda store: running(store, "worker-b", None), live)
    # Its lease ran out just now, and nothing has seen it.
    just_now = FakeClock(live.now - timedelta(seconds=601))
    unseen = with_store(database, lambda store: running(store, "worker-c", b"windows 1-5"), just_now)
    seen = with_store(database, lambda store: running(store, WORKER, b"windows 1-3"))  # a month ago
    # A bot saw its lease run out a month ago, then stopped.
    assert (
        with_store(database, lambda store: store.requeue_expired(now=A_MONTH_AGO + timedelta(hours=1))) == []
    )
    result = jobs("retry", str(seen), str(alive), str(unseen))
    assert result.exit_code == 1
    assert result.stdout == (
        f"Job #{seen} is queued again (its worker had stopped renewing its lease: it is gone); "
        "it resumes from its checkpoint.\n"
        f"Job #{unseen} is queued again (its worker had stopped renewing its lease: it is gone); "
        "it resumes from its checkpoint.\n"
    )
    assert result.stderr == (
        f"Job #{alive} was not retried: it is running (only a failed or cancelled job can be).\n"
        "Error: 1 of 3 jobs was not retried (see above).\n"
    )

    async def states(store: JobStore) -> list[tuple[JobStatus, int]]:
        return [((job := await store.get_job(i)).status, job.attempts) for i in (seen, alive, unseen)]

    assert with_store(database, states) == [
        (JobStatus.QUEUED, 1),
        (JobStatus.RUNNING, 0),
        (JobStatus.QUEUED, 1),
    ]
    claimed = with_store(database, lambda store: store.claim("worker-d", [MODEL], lease_seconds=60), live)
    assert claimed is not None and (claimed.id, claimed.checkpoint) == (unseen, b"windows 1-5")


def test_retry_of_an_id_past_the_id_column_names_no_job_and_goes_on(database: str) -> None:
    """An id past 64 bits showed a traceback (SQLite's OverflowError in the dead-worker recovery that
    retry tries first), and the ids after it were never tried."""
    failed = with_store(database, lambda store: failed_job(store, None, "damaged model file"))
    huge = "9" * 20
    result = jobs("retry", huge, str(failed))
    assert result.exit_code == 1, result.output
    assert result.stdout == f"Job #{failed} is queued again; it starts over (it has no checkpoint).\n"
    assert result.stderr == (
        f"Job #{huge} was not retried: there is no such job.\nError: 1 of 2 jobs was not retried (see above).\n"
    )


def test_retry_of_only_retryable_jobs_exits_0(database: str) -> None:
    failed = with_store(database, lambda store: failed_job(store, None, "damaged model file"))
    result = jobs("retry", str(failed))
    assert (result.exit_code, result.output) == (
        0,
        f"Job #{failed} is queued again; it starts over (it has no checkpoint).\n",
    )


# ---------------------------------------------------------------------------- prune


def test_prune_says_what_it_frees_and_a_dry_run_frees_nothing(database: str) -> None:
    async def make(store: JobStore) -> tuple[int, int, int]:
        clip = await store.store_prime(
            user_id=USER, filename="a.wav", pcm=b"\x00\x01" * 1000, sample_rate=44_100
        )
        old = await failed_job(store, b"c" * 1000, "out of memory", prime_id=clip)
        await failed_job(store, b"k" * 10, "out of memory")
        return clip, old

    clip, old = with_store(database, make)
    with_store(database, lambda store: failed_job(store, b"r" * 10, "oom"), FakeClock())  # in 2025: old too
    young = with_store(
        database,
        lambda store: failed_job(store, b"y" * 10, "oom"),
        FakeClock(datetime.now(UTC) - timedelta(days=1)),
    )

    dry = jobs("prune", "--older-than", "10", "--dry-run")
    assert (dry.exit_code, dry.output) == (
        0,
        "dry run: would drop the checkpoints of 3 jobs (1,020 bytes) and the audio of 1 prime clip "
        "(2,000 bytes), freeing 3,020 bytes (2.9 KiB); nothing was changed\n",
    )
    assert with_store(database, lambda store: store.get_checkpoint(old)) == b"c" * 1000

    nothing = jobs("prune", "--older-than", "365000")
    assert (nothing.exit_code, nothing.output) == (
        0,
        "dropped the checkpoints of 0 jobs (0 bytes) and the audio of 0 prime clips (0 bytes): 0 bytes freed\n",
    )

    pruned = jobs("prune", "--older-than", "1.5")
    file = make_url(database).database
    assert (pruned.exit_code, pruned.output) == (
        0,
        "dropped the checkpoints of 3 jobs (1,020 bytes) and the audio of 1 prime clip (2,000 bytes): "
        "3,020 bytes (2.9 KiB) freed\n"
        f"the database reuses that space for new jobs; {file} itself shrinks only after "
        f"`sqlite3 {file} VACUUM`, run while jukebot is stopped\n",
    )
    assert with_store(database, lambda store: store.get_checkpoint(old)) is None
    assert with_store(database, lambda store: store.get_checkpoint(young)) == b"y" * 10
    assert with_store(database, lambda store: store.get_prime(clip)).pcm == b""

    refused = jobs("retry", str(old))
    assert refused.exit_code == 1
    assert refused.stderr.splitlines()[0] == (
        f"Job #{old} was not retried: the audio of its prime clip #{clip} was pruned, so it cannot run "
        "again (ask for a new job with the clip)."
    )


@pytest.mark.parametrize(
    "args",
    [
        ["retry"],
        ["retry", "abc"],
        ["retry", "0"],
        ["list", "--limit", "0"],
        ["list", "--limit", "1001"],
        ["list", "--status", "broken"],
        ["prune"],
    ],
)
def test_bad_arguments_are_usage_errors(database: str, args: list[str]) -> None:
    result = jobs(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.output.splitlines()[-1].startswith("Error: ")


@pytest.mark.parametrize("command", ["cancel", "retry"])
def test_a_job_id_is_a_whole_number_as_list_shows_it(database: str, command: str) -> None:
    """`1-3` was "not a valid integer range" (as if ranges were taken); `#4` as `jobs list` shows it
    was refused (operator audit)."""
    result = jobs(command, "1-3")
    assert result.exit_code == 2, result.output
    assert "'1-3' is no job id: give whole numbers, e.g. 12 (as `jobs list` shows them)" in result.output
    assert "range" not in result.output
    result = jobs(command, "#4")
    assert result.exit_code == 1 and "#4" in result.output and "no job id" not in result.output, result.output
