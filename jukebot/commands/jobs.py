"""`jukebot jobs …`: look at jobs, cancel them, put failed ones back in the queue, free what old ones keep."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

import click

from jukebot.commands import database_problem, first_line, require_current_schema, settings_or_exit
from jukebot.settings import Settings
from sampler.units import count_of
from storage.models import JobStatus

if TYPE_CHECKING:
    from storage.records import Job, PruneReport
    from storage.store import JobStore

T = TypeVar("T")
MAX_ERROR_CHARS = 160  # of a failed job's error in `jobs list`
CANCELLED_BY_OPERATOR = "by the operator"  # the reason a progress message shows


@click.group()
def jobs() -> None:
    """Look at jobs, cancel or retry them, free what old failed ones keep."""


def _with_store(action: Callable[[JobStore], Awaitable[T]], settings: Settings | None = None) -> T:
    """Run `action` on the configured database, which must exist and be at the latest schema (as
    `jukebot db check` asks; nothing is created or migrated); stop with one sentence when it cannot.
    `settings`: those loaded already (else they are loaded here)."""
    from storage.engine import create_engine
    from storage.errors import StorageError
    from storage.store import JobStore

    settings = settings or settings_or_exit()
    require_current_schema(settings, "it holds no jobs")

    async def run() -> T:
        engine = create_engine(settings.database_url)
        try:
            return await action(JobStore(engine))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(run())
    except StorageError as exc:
        raise click.ClickException(str(exc)) from None
    except Exception as exc:
        message = _database_problem(exc, settings)
        if message is None:
            raise
        raise click.ClickException(message) from None


def _database_problem(error: Exception, settings: Settings) -> str | None:
    from sqlalchemy.exc import SQLAlchemyError

    message = database_problem(error, settings)
    if message is None and isinstance(error, SQLAlchemyError):
        reason = first_line(getattr(error, "orig", None) or error)
        message = f"the database at {settings.database_url_for_display} failed: {reason}"
    return message


def _one_line(text: str, limit: int) -> str:
    """`text` on one line of printable characters, at most `limit` of them."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def _job_line(job: Job) -> str:
    created = job.created_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    guild = "DM" if job.guild_id is None else str(job.guild_id)
    line = (
        f"#{job.id} {job.status.value} {job.kind.value} {_one_line(job.model, 64)} guild={guild} "
        f"user={job.user_id} created={created} attempts={job.attempts}/{job.max_attempts} "
        f"checkpoint={'yes' if job.has_checkpoint else 'no'}"
    )
    if job.status == JobStatus.FAILED:
        line += f" error: {_one_line(job.error or 'no reason given', MAX_ERROR_CHARS)}"
    return line


@jobs.command("list")
@click.option(
    "--status",
    type=click.Choice([status.value for status in JobStatus]),
    default=None,
    help="Only jobs in this state.",
)
@click.option(
    "--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="At most this many jobs."
)
def list_jobs(status: str | None, limit: int) -> None:
    """The newest jobs, one line each (id, status, kind, model, server, user, created, attempts,
    checkpoint, and a failed job's error). Reads only."""
    found = _with_store(lambda store: store.list_jobs(status, limit))
    if not found:
        click.echo(f"no {status} jobs" if status else "no jobs")
    for job in found:
        click.echo(_job_line(job))


@jobs.command()
@click.argument("job_ids", metavar="ID...", nargs=-1, required=True, type=click.IntRange(min=1))
def retry(job_ids: tuple[int, ...]) -> None:
    """Put failed or cancelled jobs back in the queue, resuming from their checkpoints.

    Each job's attempts start again and its results are posted anew when it finishes. Its running-jobs
    limit becomes the one in force now: its server's own, else JUKEBOT_MAX_RUNNING_JOBS_PER_USER as
    this command's settings have it. A job that is not failed or cancelled is refused, and so is one
    cancelled because the bot was removed from its server (the others still go back); exits 1 when
    any was refused.
    """
    from storage.errors import JobNotFound, JobNotRetryable

    wanted = list(dict.fromkeys(job_ids))  # each once, in the order given
    # The bot-wide limit is the bot's setting: this command reads the same settings (environment, .env).
    settings = settings_or_exit()
    bot_wide = settings.max_running_jobs_per_user

    async def retry_each(store: JobStore) -> list[tuple[int, Job | str]]:
        outcomes: list[tuple[int, Job | str]] = []
        for job_id in wanted:
            try:
                outcomes.append((job_id, await store.retry_job(job_id, bot_wide_running_limit=bot_wide)))
            except JobNotFound:
                outcomes.append((job_id, f"Job #{job_id} was not retried: there is no such job."))
            except JobNotRetryable as exc:
                outcomes.append((job_id, str(exc)))
        return outcomes

    refused = 0
    for job_id, outcome in _with_store(retry_each, settings):
        if isinstance(outcome, str):
            refused += 1
            click.echo(outcome, err=True)
        elif outcome.has_checkpoint:
            click.echo(f"Job #{job_id} is queued again; it resumes from its checkpoint.")
        else:
            click.echo(f"Job #{job_id} is queued again; it starts over (it has no checkpoint).")
    if refused == len(wanted) == 1:
        raise click.ClickException("the job was not retried (see above).")
    if refused:
        verb = "was" if refused == 1 else "were"
        raise click.ClickException(f"{refused} of {len(wanted)} jobs {verb} not retried (see above).")


@jobs.command()
@click.argument("job_ids", metavar="ID...", nargs=-1, required=True, type=click.IntRange(min=1))
def cancel(job_ids: tuple[int, ...]) -> None:
    """Cancel queued or running jobs, whoever started them (a server the bot left while it was
    offline, a job hogging the GPUs): queued ones at once, running ones after their worker's current
    step. Their progress messages say "by the operator". Exits 1 when any was not cancelled."""
    from storage.errors import JobAlreadyFinished, JobNotFound

    wanted = list(dict.fromkeys(job_ids))  # each once, in the order given

    async def cancel_each(store: JobStore) -> list[str | None]:
        outcomes: list[str | None] = []
        for job_id in wanted:
            try:
                status = await store.request_cancel(job_id, None, reason=CANCELLED_BY_OPERATOR)
            except JobNotFound:
                outcomes.append(f"Job #{job_id} was not cancelled: there is no such job.")
            except JobAlreadyFinished as exc:
                outcomes.append(f"Job #{job_id} was not cancelled: it has already finished ({exc.status}).")
            else:
                outcomes.append(None)
                done = "is cancelled" if status == JobStatus.CANCELLED else "stops after its current step"
                click.echo(f"Job #{job_id} {done}.")
        return outcomes

    refused = [outcome for outcome in _with_store(cancel_each) if outcome is not None]
    for outcome in refused:
        click.echo(outcome, err=True)
    if refused:
        raise click.ClickException(f"{len(refused)} of {len(wanted)} jobs not cancelled (see above).")


def _days(text: str) -> timedelta:
    """`--older-than`: a positive, finite number of days (so large that no job is that old: the most
    a timedelta holds)."""
    try:
        days = float(text)
    except ValueError:
        days = math.nan
    if not math.isfinite(days) or days <= 0:
        raise click.ClickException(f"--older-than takes a positive number of days, got {text!r}")
    try:
        age = timedelta(days=days)
    except OverflowError:
        return timedelta.max
    if age <= timedelta(0):  # under a microsecond
        raise click.ClickException(f"--older-than {text} is under a microsecond; give a number of days")
    return age


def _size(count: int) -> str:
    """`1,234,567 bytes (1.2 MiB)`."""
    scaled, unit = float(count), "bytes"
    for larger in ("KiB", "MiB", "GiB", "TiB"):
        if scaled < 1024:
            break
        scaled, unit = scaled / 1024, larger
    return f"{count:,} bytes" if unit == "bytes" else f"{count:,} bytes ({scaled:.1f} {unit})"


@jobs.command()
@click.option(
    "--older-than",
    "older_than",
    metavar="DAYS",
    required=True,
    help="Failed and cancelled jobs that finished more than DAYS days ago (fractions too: 0.5).",
)
@click.option("--dry-run", is_flag=True, help="Only say what would be freed.")
def prune(older_than: str, dry_run: bool) -> None:
    """Drop the checkpoints of old failed and cancelled jobs, and the audio of prime clips only such
    jobs use. Job rows, samples and votes stay; a pruned job retried later starts over (one whose
    clip went cannot be retried)."""
    age = _days(older_than)
    settings = settings_or_exit()
    report: PruneReport = _with_store(lambda store: store.prune_finished(age, dry_run=dry_run), settings)
    checkpoints = (
        f"the checkpoints of {count_of(len(report.job_ids), 'job')} ({report.checkpoint_bytes:,} bytes)"
    )
    clips = f"the audio of {count_of(len(report.prime_ids), 'prime clip')} ({report.prime_bytes:,} bytes)"
    if dry_run:
        click.echo(
            f"dry run: would drop {checkpoints} and {clips}, freeing {_size(report.freed_bytes)}; "
            "nothing was changed"
        )
    else:
        click.echo(f"dropped {checkpoints} and {clips}: {_size(report.freed_bytes)} freed")
        if settings.sqlite_path is not None and report.freed_bytes:
            # VACUUM rewrites the whole file under a lock the bot and workers would wait on.
            click.echo(
                f"the database reuses that space for new jobs; {settings.sqlite_path} itself shrinks "
                f"only after `sqlite3 {settings.sqlite_path} VACUUM`, run while jukebot is stopped"
            )
