"""`jukebot jobs …`: look at jobs, cancel them, put failed ones back in the queue, free what old ones keep."""

from __future__ import annotations

import asyncio
import math
import shlex
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import click

from jukebot.commands import database_problem, first_line, require_current_schema, settings_or_exit
from jukebot.settings import Settings
from sampler.units import count_of
from sampler.user_text import shorten_user_text
from storage.models import JobStatus

if TYPE_CHECKING:
    from storage.records import Job, PruneReport
    from storage.store import JobStore

T = TypeVar("T")
MAX_ERROR_CHARS = 160  # of a failed job's error in `jobs list`
CANCELLED_BY_OPERATOR = "by the operator"  # the reason a progress message shows


# Longer than any id a database column holds (20 digits: 2**64), and than `int` reads without a limit.
MAX_ID_DIGITS = 100


class JobIdType(click.ParamType):
    """A job's id as `jobs list` shows it (`#12` is taken too); anything else is refused saying so,
    not as "not a valid integer range" (which suggested that ranges such as 1-3 are taken)."""

    name = "id"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        else:
            text = str(value).strip().removeprefix("#")
            digits = text.removeprefix("-")  # a negative number is refused below, as 0 is
            if not digits.isascii() or not digits.isdigit():
                self.fail(f"{value!r} is no job id: give whole numbers, e.g. 12 (as `jobs list` shows them)")
            if len(digits) > MAX_ID_DIGITS:  # (Python refuses to read an int of over 4,300 digits)
                self.fail(
                    f"{shorten_user_text(text)} is no job id: no job has an id of {len(digits):,} digits"
                )
            number = int(text)
        if number < 1:
            self.fail(f"{value!r} is no job id: ids start at 1")
        return number


JOB_ID = JobIdType()


@click.group()
def jobs() -> None:
    """Look at jobs, cancel or retry them, free what old failed ones keep."""


def with_store(
    action: Callable[[JobStore], Awaitable[T]],
    settings: Settings | None = None,
    missing: str = "it holds no jobs",
) -> T:
    """Run `action` on the configured database, which must exist and be at the latest schema (as
    `jukebot db check` asks; nothing is created or migrated); stop with one sentence when it cannot
    (`missing`: what a database not made yet means for `action`). `settings`: those loaded already
    (else they are loaded here)."""
    from storage.engine import create_engine
    from storage.errors import StorageError
    from storage.store import JobStore

    settings = settings or settings_or_exit()
    require_current_schema(settings, missing)

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
    found = with_store(lambda store: store.list_jobs(status, limit))
    if not found:
        click.echo(f"no {status} jobs" if status else "no jobs")
    for job in found:
        click.echo(_job_line(job))


# `-1` is read as an id (and refused as one), not as an unknown option.
IDS_ONLY = {"ignore_unknown_options": True}


@jobs.command(context_settings=IDS_ONLY)
@click.argument("job_ids", metavar="ID...", nargs=-1, required=True, type=JOB_ID)
def retry(job_ids: tuple[int, ...]) -> None:
    """Put failed or cancelled jobs back in the queue, resuming from their checkpoints.

    Each job's attempts start again and its results are posted anew when it finishes. Its running-jobs
    limit becomes the one in force now: its server's own, else JUKEBOT_MAX_RUNNING_JOBS_PER_USER as
    this command's settings have it. Refused by name (the others still go back): a job that is not
    failed or cancelled, one whose prime clip was pruned, an upsample another job already covers, and
    a job of a server the bot was removed from, until the bot is in it again. A running job whose
    lease ran out is recovered now, as a bot or worker would recover it: queued again, its lost attempt
    counted. Its worker is taken to be gone, without the lease of grace the bot and workers give a
    worker that may only be cut off from the database (one that was stops the job when it sees the
    database back; the job resumes from its last checkpoint). Exits 1 when any was refused.
    """
    from storage.errors import JobNotFound, JobNotRetryable

    wanted = list(dict.fromkeys(job_ids))  # each once, in the order given
    # The bot-wide limit is the bot's setting: this command reads the same settings (environment, .env).
    settings = settings_or_exit()
    bot_wide = settings.max_running_jobs_per_user
    # Filled as each job's retry commits, so those done are reported even when a later one fails.
    outcomes: list[tuple[int, Job | str]] = []

    # Jobs whose worker had died: they were still `running` (no bot or worker may be running to find
    # their lease over), and are queued again by that recovery, for each alone, rather than refused.
    recovered: set[int] = set()

    async def retry_each(store: JobStore) -> None:
        for job_id in wanted:
            # At once: a lease's grace would make the operator, who knows the worker died, run the
            # command again a lease later.
            recovered_now = await store.requeue_expired(only_job=job_id, at_once=True)
            if recovered_now == [(job_id, JobStatus.QUEUED)]:
                recovered.add(job_id)
                outcomes.append((job_id, await store.get_job(job_id)))
                continue
            try:
                outcomes.append((job_id, await store.retry_job(job_id, bot_wide_running_limit=bot_wide)))
            except JobNotFound:
                outcomes.append((job_id, f"Job #{job_id} was not retried: there is no such job."))
            except JobNotRetryable as exc:
                outcomes.append((job_id, str(exc)))

    def report() -> int:
        for job_id, outcome in outcomes:
            if isinstance(outcome, str):
                click.echo(outcome, err=True)
            else:
                gone = (
                    " (its worker had stopped renewing its lease: it is gone)" if job_id in recovered else ""
                )
                resumes = (
                    "it resumes from its checkpoint"
                    if outcome.has_checkpoint
                    else "it starts over (it has no checkpoint)"
                )
                click.echo(f"Job #{job_id} is queued again{gone}; {resumes}.")
        return sum(isinstance(outcome, str) for _job_id, outcome in outcomes)

    _each_or_exit(retry_each, settings, wanted, outcomes, report, "retried", {JobStatus.QUEUED})
    refused = report()
    if refused == len(wanted) == 1:
        raise click.ClickException("the job was not retried (see above).")
    if refused:
        verb = "was" if refused == 1 else "were"
        raise click.ClickException(f"{refused} of {len(wanted)} jobs {verb} not retried (see above).")


@jobs.command(context_settings=IDS_ONLY)
@click.argument("job_ids", metavar="ID...", nargs=-1, required=True, type=JOB_ID)
def cancel(job_ids: tuple[int, ...]) -> None:
    """Cancel queued or running jobs, whoever started them (a server the bot left while it was
    offline, a job hogging the GPUs): queued ones at once, running ones after their worker's current
    step. Their progress messages say "by the operator". Exits 1 when any was not cancelled."""
    from storage.errors import JobAlreadyFinished, JobNotFound

    wanted = list(dict.fromkeys(job_ids))  # each once, in the order given
    settings = settings_or_exit()
    # (job, what happened, whether it was cancelled), filled as each commits; printed after the work,
    # so that output that cannot be written (a reader that left: `| head -1`) stops no cancel.
    outcomes: list[tuple[int, str, bool]] = []

    async def cancel_each(store: JobStore) -> None:
        for job_id in wanted:
            try:
                status = await store.request_cancel(job_id, None, reason=CANCELLED_BY_OPERATOR)
            except JobNotFound:
                outcomes.append((job_id, f"Job #{job_id} was not cancelled: there is no such job.", False))
            except JobAlreadyFinished as exc:
                outcomes.append(
                    (
                        job_id,
                        f"Job #{job_id} was not cancelled: it has already finished ({exc.status}).",
                        False,
                    )
                )
            else:
                done = "is cancelled" if status == JobStatus.CANCELLED else "stops after its current step"
                # A worker that died holds no step to stop after: once its lease is over, the job is
                # cancelled now, not when a bot or worker next looks (none may be running).
                if status == JobStatus.CANCELLING and await store.requeue_expired(
                    only_job=job_id, at_once=True
                ):
                    done = "is cancelled (its worker had stopped renewing its lease: it is gone)"
                outcomes.append((job_id, f"Job #{job_id} {done}.", True))

    def report() -> int:
        for _job_id, text, cancelled in outcomes:
            if cancelled:
                click.echo(text)
        refused = [text for _job_id, text, cancelled in outcomes if not cancelled]
        for text in refused:
            click.echo(text, err=True)
        return len(refused)

    _each_or_exit(
        cancel_each,
        settings,
        wanted,
        outcomes,
        report,
        "cancelled",
        {JobStatus.CANCELLING, JobStatus.CANCELLED},
    )
    refused = report()
    if refused:
        raise click.ClickException(f"{refused} of {len(wanted)} jobs not cancelled (see above).")


def _each_or_exit(
    action: Callable[[JobStore], Awaitable[None]],
    settings: Settings,
    wanted: list[int],
    outcomes: list[Any],
    report: Callable[[], int],
    verb: str,
    done_as: set[JobStatus],
) -> None:
    """Run `action`, which handles the `wanted` jobs in turn and appends one outcome each; when it
    stops with an error (a time-out, a lost database), print the outcomes of the jobs it handled
    before (each committed) and then stop, naming the job it stopped at and those not tried. The
    job it stopped at is read again: a connection lost as its change committed leaves it changed
    (`done_as`: the statuses that say so), and a database gone says nothing."""
    started = False

    async def run(store: JobStore) -> None:
        nonlocal started
        started = True
        await action(store)

    try:
        with_store(run, settings)
    except click.ClickException as exc:
        done = len(outcomes)
        if not started or done >= len(wanted):
            raise
        report()
        stopped = wanted[done]
        left = wanted[done + 1 :]
        named = ", ".join(f"#{job_id}" for job_id in left)
        rest = f"; jobs {named} were not tried" if len(left) > 1 else f"; job {named} was not tried"
        rest = rest if left else ""
        try:
            status = with_store(lambda store: store.get_job(stopped), settings).status
        except click.ClickException:
            what = (
                f"whether job #{stopped} was {verb} is unknown (the database did not answer again: "
                "`jukebot jobs list` shows it once it does)"
            )
        else:
            was = "was" if status in done_as else "was not"
            what = f"job #{stopped} {was} {verb} (it is {status.value})"
        raise click.ClickException(f"{what}{rest}: {exc.message}") from None


def _days(_ctx: click.Context | None, param: click.Parameter | None, text: str) -> timedelta:
    """`--older-than`: a positive number of days. One too large for a timedelta (`1e308`, and so `inf`
    and `1e309`, which overflows a float to it) means the most a timedelta holds: older than any job
    could be, so nothing is pruned."""
    try:
        days = float(text)
    except ValueError:
        days = math.nan
    if math.isnan(days) or days <= 0:
        raise click.BadParameter(f"takes a positive number of days, got {text!r}", param=param)
    try:
        age = timedelta(days=days)
    except OverflowError:
        return timedelta.max
    if age <= timedelta(0):  # under a microsecond
        raise click.BadParameter(f"{text} is under a microsecond; give a number of days", param=param)
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
    callback=_days,
    help=(
        "Failed and cancelled jobs that finished more than DAYS days ago (fractions too: 0.5; a number "
        "no job's age reaches, up to inf, prunes nothing)."
    ),
)
@click.option("--dry-run", is_flag=True, help="Only say what would be freed.")
def prune(older_than: timedelta, dry_run: bool) -> None:
    """Drop the checkpoints of old failed and cancelled jobs, and the audio of prime clips only such
    jobs use, or no job uses (stored over DAYS days and a day ago). Job rows, samples and votes stay;
    a pruned job retried later starts over (one whose clip went cannot be retried)."""
    age = older_than
    settings = settings_or_exit()
    report: PruneReport = with_store(lambda store: store.prune_finished(age, dry_run=dry_run), settings)
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
            path = str(settings.sqlite_path)
            click.echo(
                f"the database reuses that space for new jobs; {path} itself shrinks "
                f"only after `sqlite3 {shlex.quote(path)} VACUUM`, run while jukebot is stopped"
            )
