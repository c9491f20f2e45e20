"""`jukebot` subcommands, one module per group; `jukebot.cli` adds each to the root group."""

from __future__ import annotations

import getpass
import importlib.util
import logging
import math
import os
import re
from pathlib import Path
from typing import Any

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from jukebot.settings import (
    Settings,
    SettingsError,
    database_url_variable,
    load_settings,
    misspelled_variables,
)
from sampler.files import not_a_file, on_read_only_mount
from sampler.worker.logs import configure_logging

log = logging.getLogger(__name__)

# Postgres SQLSTATEs an operator fixes in DATABASE_URL or on the server.
_NO_SUCH_DATABASE = "3D000"
_LOGIN_REFUSED = ("28000", "28P01")
_INSUFFICIENT_PRIVILEGE = "42501"
_READ_ONLY_TRANSACTION = "25006"


def settings_or_exit(*, warn_misspelled: bool = True) -> Settings:
    """Load settings (and log as they say), or stop with the one sentence that says what to set."""
    try:
        settings = load_settings()  # a .env that is not UTF-8 is a SettingsError too
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    _start_logging(settings.log_level, settings.log_format, warn_misspelled=warn_misspelled)
    shown = settings.model_dump() | {"database_url": settings.database_url_for_display}  # token: SecretStr
    log.debug("settings: %s", shown)
    return settings


def logging_without_settings() -> None:
    """For a command that needs no setting (`curate`, `sample --model_dir`): log as the settings say
    (`-v`, JUKEBOT_LOG_LEVEL, JUKEBOT_LOG_FORMAT) and warn of a misspelled variable, as every command
    does; settings that cannot be read (an unrelated bad value) leave logging's defaults, and the
    command goes on."""
    try:
        settings_or_exit()
    except click.ClickException:
        fields = Settings.model_fields
        _start_logging(fields["log_level"].default, fields["log_format"].default, warn_misspelled=True)


def _start_logging(level: str, log_format: Any, *, warn_misspelled: bool) -> None:
    configure_logging(level, log_format)
    if warn_misspelled:
        for name, meant in misspelled_variables():
            log.warning("%s is not a jukebot setting, so it is ignored: did you mean %s?", name, meant)


def file_wording(text: str) -> str:
    """An audio error's sentence (written for the bot, which speaks of attachments) for a file named on
    the command line."""
    text = re.sub(r"\s*Export (?:it|the file) again and re-attach it\.", " Export it again.", text)
    text = re.sub(r",? and attach it again\.", ".", text)
    return re.sub(r"\s*Attach (.+?)\.$", r" Use \1 instead.", text.strip(), flags=re.DOTALL)


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange without NaN, which passes every bound check (each comparison with it is false)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value} is not a number", param, ctx)
        return number


# What a bot-only host (no `worker` extra) cannot do, as `require_torch` names it.
TORCH_USERS = "Model files (verifying, importing) and offline sampling"


def require_torch(what: str, *, bot_alone: bool = False) -> None:
    """Stop with one sentence when torch (the `worker` extra) is not installed: a bot-only host has none.
    `bot_alone`: `jukebot run`, which JUKEBOT_GPUS=none runs without workers (no other command can)."""
    if importlib.util.find_spec("torch") is None:
        raise click.ClickException(
            f"{what} need torch, which is not installed here: install the worker extra "
            "(pip install 'jukebot[worker]'; scripts/run.sh does unless JUKEBOT_TORCH=skip)"
            + (
                ", or set JUKEBOT_GPUS=none to run the bot alone, with workers on other machines."
                if bot_alone
                else "."
            )
        )


def model_dir_refusal(model_dir: Path, **wording: str) -> str | None:
    """Why no model at all can be read from `model_dir` (a file, a link loop, no permission on it), as
    `jukebot models list` says it; None when it can, or does not exist yet. A model folder inside it
    that cannot be read is not: the other models' files still can. `wording`: `model_dir_problem`'s."""
    from sampler.model_files import model_dir_problem

    problem = model_dir_problem(model_dir, **wording)
    # (os.path.isdir: Path.is_dir raises where a folder above cannot be entered)
    if problem is None or (os.path.isdir(model_dir) and os.access(model_dir, os.R_OK | os.X_OK)):
        return None
    return problem


def upgrade_or_exit(settings: Settings) -> str | None:
    """Migrate the database to the latest schema, or stop with the sentence that says what to fix;
    returns the schema revision it was at (None: none, an empty database)."""
    from storage.migrate import missing_rights, upgrade_to_head

    problem = sqlite_path_problem(settings)
    if problem is not None:
        raise click.ClickException(problem)
    try:
        before = upgrade_to_head(settings.database_url)
        missing = missing_rights(settings.database_url)
    except Exception as exc:
        message = database_problem(exc, settings)
        if message is None:
            raise
        raise click.ClickException(message) from None
    if missing:
        user = postgres_user(settings)
        raise click.ClickException(
            f"Postgres user {user!r} may not write jukebot's tables at {settings.database_url_for_display} "
            f"(it lacks {'; '.join(missing)}): {_grant_tables(user)}"
        )
    return before


def _grant_tables(user: str) -> str:
    """The advice that gives `user` what jukebot does with tables another user owns."""
    return (
        f"grant them (`{_grant_statements(user)}`, as the tables' owner), or point {database_url_variable()} "
        "at a user that owns the database."
    )


def _grant_statements(user: str) -> str:
    role = sql_name(user)
    return (
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}; "
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}"
    )


def _has_schema(settings: Settings) -> bool:
    """Whether the database holds jukebot's tables (at any revision); False when that cannot be read."""
    from storage.migrate import current_revision

    try:
        return current_revision(settings.database_url) is not None
    except Exception:  # (an answer for advice only: the error being explained is the one to report)
        return False


def postgres_user(settings: Settings) -> str:
    """The user DATABASE_URL logs in as: in the URL or its query string (`?user=`); with neither, asyncpg
    takes PGUSER or the OS user."""
    url = make_url(settings.database_url)
    given = url.query.get("user")
    return (
        url.username
        or (given if isinstance(given, str) else None)
        or os.environ.get("PGUSER")
        or getpass.getuser()
    )


def sql_name(name: str) -> str:
    """`name` as a Postgres statement must spell it: quoted when Postgres would otherwise fold it to
    lower case or read it as a keyword (`"Jukebot"`, `"user"`), so advice run as written changes the
    role or database it names."""
    from sqlalchemy.dialects import postgresql

    return str(postgresql.dialect().identifier_preparer.quote(name))


def sqlite_path_problem(settings: Settings) -> str | None:
    """One sentence when DATABASE_URL's SQLite file cannot be one (a directory, under a file, in a folder
    this user may not write, or a file it may not read and write).

    Checked before connecting: a failed connect leaves aiosqlite's thread racing the event loop's
    shutdown, which may print a traceback after the error.
    """
    path = settings.sqlite_path
    if path is None:
        return None
    special = _special_file_problem(path)
    if special is not None:
        return special
    # os.path's tests, not Path's: those raise where a folder on the way cannot be entered.
    if os.path.isdir(path):
        return (
            f"{database_url_variable()} names the directory {path}, not a SQLite file: add a file name, "
            f"e.g. sqlite:///{path / 'jukebot.sqlite3'}."
        )
    existing = next((parent for parent in path.parents if os.path.exists(parent)), None)
    if existing is not None and not os.path.isdir(existing):
        return (
            f"{database_url_variable()}'s SQLite file {path} would be inside {existing}, which is a file, "
            f"not a directory: point {database_url_variable()} at a file in a directory."
        )
    if existing is not None and not os.access(existing, os.X_OK):
        return (
            f"{database_url_variable()}'s SQLite file {path} cannot be reached: this user may not enter the "
            f"folder {existing}. Change that folder's permissions, or point {database_url_variable()} at a "
            "folder this user may write in."
        )
    if not os.path.exists(path) and existing is not None and on_read_only_mount(existing):
        return (
            f"{database_url_variable()}'s SQLite file {path} cannot be created: {existing} is on a read-only "
            f"file system. Point {database_url_variable()} at a folder on a writable one."
        )
    if not os.path.exists(path) and existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        return (
            f"{database_url_variable()}'s SQLite file {path} cannot be created: this user may not write in "
            f"{existing}. Change that folder's permissions, or point {database_url_variable()} at a folder "
            "this user may write in."
        )
    if os.path.isfile(path) and not os.access(path, os.R_OK | os.W_OK) and on_read_only_mount(path):
        return (
            f"{database_url_variable()}'s SQLite file {path} is on a read-only file system, where it cannot "
            f"be written: copy it to a writable one and point {database_url_variable()} there."
        )
    if os.path.isfile(path) and not os.access(path, os.R_OK | os.W_OK):
        return (
            f"{database_url_variable()}'s SQLite file {path} cannot be read and written by this user: fix "
            f"its permissions, or point {database_url_variable()} at another file."
        )
    return None


def _special_file_problem(path: Path) -> str | None:
    """The sentence for a SQLite path that is a link to nothing, a loop of links, or a file that is no
    regular file (a FIFO, a socket, a device), none of which SQLite can open or create; else None (a
    folder has a sentence of its own)."""
    try:
        found = not_a_file(path)
    except OSError:  # a folder on the way that cannot be entered: the checks after this say so
        return None
    if found is None or found.missing or found.what == "a folder":
        return None
    if found.link_loop:
        return (
            f"{database_url_variable()}'s SQLite file {path} is a loop of links (a link that leads back to "
            f"itself): fix or remove the link, or point {database_url_variable()} at the database file "
            "itself."
        )
    if found.broken_link:
        return (
            f"{database_url_variable()}'s SQLite file {path} is a link to {found.link_target}, which does "
            f"not exist (SQLite cannot create a file through it): point {database_url_variable()} at the "
            "database file itself, or remove the link so that `jukebot db upgrade` creates a new database "
            "there."
        )
    return (
        f"{database_url_variable()}'s SQLite file {path} is {found.what}, not a regular file: point "
        f"{database_url_variable()} at jukebot's database file, or at a new file name to start an empty one."
    )


def database_problem(error: BaseException, settings: Settings) -> str | None:
    """One sentence with the fix for a database that cannot be used, or None for anything else.

    Never shows the password: the URL is the settings' display form.
    """
    specific = specific_database_problem(error, settings)
    if specific is not None:
        return specific
    shown = settings.database_url_for_display
    if isinstance(error, DBAPIError):
        return f"The database at {shown} failed: {first_line(error.orig)}."
    if isinstance(error, TimeoutError):
        return timed_out(settings)
    if isinstance(error, OSError) and not raised_by_output(error):
        return cannot_reach(shown, first_line(error))
    return None


def cannot_reach(where: str, reason: str) -> str:
    if "rejected SSL" in reason:  # (asyncpg's words: the server answers, without SSL)
        return (
            f"The database server at {where} does not take SSL ({reason}): turn SSL on in the server, "
            "or, where the network between them is yours to trust, set sslmode=prefer or sslmode=disable "
            f"in {database_url_variable()}."
        )
    return f"Cannot reach the database at {where} ({reason}): start it or fix {database_url_variable()}."


def timed_out(settings: Settings) -> str:
    """The sentence for a database call that timed out (asyncpg's TimeoutError): the database was reached,
    but a statement waited past its limit (for a lock another process holds) or the connection went
    silent."""
    from storage import engine

    return (
        f"The database at {settings.database_url_for_display} timed out: a statement waited over "
        f"{engine.POSTGRES_STATEMENT_TIMEOUT_SECONDS:g} s, e.g. for a lock another process holds (a stuck "
        "transaction: see pg_stat_activity), or the server did not answer within "
        f"{engine.POSTGRES_CONNECT_TIMEOUT_SECONDS:g} s (a host or network gone silent); try again."
    )


def raised_by_output(error: BaseException) -> bool:
    """Whether `error` came from writing the command's output (click.echo to a pipe whose reader left, a
    full disk, a closed stdout), not from the database's connection."""
    frame = error.__traceback__
    while frame is not None:
        if frame.tb_frame.f_code is click.utils.echo.__code__:
            return True
        frame = frame.tb_next
    return False


def specific_database_problem(error: BaseException, settings: Settings) -> str | None:
    """The sentence for a database problem with a fix of its own (no such database, a refused
    user, not a SQLite file, a schema from a newer jukebot), or None."""
    from storage.migrate import (
        ForeignTables,
        MigrationBlocked,
        NoRoomToMigrate,
        ReadOnlySessions,
        UnknownSchemaRevision,
    )

    shown = settings.database_url_for_display
    if isinstance(error, ReadOnlySessions) or (
        isinstance(error, DBAPIError) and getattr(error.orig, "sqlstate", None) == _READ_ONLY_TRANSACTION
    ):
        user = postgres_user(settings)
        return (
            f"The database at {shown} takes no writes from Postgres user {user!r}: its sessions are "
            "read-only (the server is a standby, or `default_transaction_read_only` is on for the user or "
            f"the database): point {database_url_variable()} at the primary server, or turn it off (`ALTER "
            f"ROLE {sql_name(user)} SET default_transaction_read_only = off`, and the same for the "
            "database); nothing was changed."
        )
    if isinstance(error, NoRoomToMigrate):
        return (
            f"The database at {shown} was not upgraded: {error}. Free some space on that disk (or move the "
            f"file to a larger one and point {database_url_variable()} at it), then start again; nothing was "
            "changed."
        )
    if isinstance(error, MigrationBlocked):
        return (
            f"The database at {shown} was not upgraded: {error}. End those sessions (a psql left in a "
            "transaction: COMMIT or ROLLBACK it, or `SELECT pg_terminate_backend(PID)`), then start again."
        )
    if isinstance(error, ForeignTables):
        return (
            f"The database at {shown} has no jukebot schema but holds tables named like jukebot's "
            f"({', '.join(error.tables)}): it is another program's database, or jukebot's first migration "
            f"did not finish there; point {database_url_variable()} at jukebot's own or an empty database "
            "(it was not changed)."
        )
    if isinstance(error, UnknownSchemaRevision):
        if error.newer:
            return (
                f"The database's schema (revision {error.revision}) is newer than this jukebot knows "
                f"(latest {error.head}): upgrade jukebot on this machine (machines sharing one database "
                f"must run the same version); the database at {shown} was not changed."
            )
        return (
            f"The database at {shown} has schema revision {error.revision}, which this jukebot does not "
            f"know (latest {error.head}): if a newer jukebot migrated it, upgrade jukebot on this machine, "
            f"else point {database_url_variable()} at jukebot's own database (it was not changed)."
        )
    if isinstance(error, DBAPIError):
        code = getattr(error.orig, "sqlstate", None)
        url = make_url(settings.database_url)
        if code == _NO_SUCH_DATABASE:
            # The host may come in the query string (`postgresql:///db?host=/run/postgresql`).
            host = url.host or url.query.get("host") or "the local server"
            return (
                f"Database {url.database!r} does not exist on {host}: create it (e.g. `createdb "
                f"{url.database}`) or point {database_url_variable()} at another one ({shown})."
            )
        if code in _LOGIN_REFUSED:
            user = postgres_user(settings)
            return (
                f"Postgres refused user {user!r} ({first_line(error.orig)}): "
                f"fix the user or password in {database_url_variable()} ({shown})."
            )
        if code == _INSUFFICIENT_PRIVILEGE:
            user = postgres_user(settings)
            said = str(error.orig)
            if re.search(r"must be owner of (table|sequence|relation|index) ", said) or (
                re.search(r"permission denied for schema ", said) and _has_schema(settings)
            ):
                # A migration altering tables another user owns, or adding tables beside them: neither
                # the database's ownership nor a GRANT lets this user do both.
                return (
                    f"Postgres user {user!r} does not own jukebot's tables at {shown}, and upgrading their "
                    f"schema needs their owner ({first_line(error.orig)}): run `jukebot db upgrade` once "
                    f"with {database_url_variable()} set to the user that owns them, then, as that user, "
                    f"grant {user!r} the tables the upgrade made too (`{_grant_statements(user)}`), and "
                    f"start jukebot as {user!r} again (nothing was changed)."
                )
            if re.search(r"permission denied for (table|sequence|relation) ", said):
                # Jukebot's tables are there, another user's: owning the database would grant nothing.
                return (
                    f"Postgres user {user!r} may not use jukebot's tables at {shown} "
                    f"({first_line(error.orig)}): {_grant_tables(user)}"
                )
            return (
                f"Postgres user {user!r} may not use the database at {shown} as jukebot needs "
                f"({first_line(error.orig)}): make it the database's owner (`ALTER DATABASE "
                f"{sql_name(url.database or user)} OWNER TO {sql_name(user)}`; on Postgres 15 and later a "
                "user that does not own the database may not create tables in its public schema), or point "
                f"{database_url_variable()} at a user that owns it."
            )
        sqlite_path = settings.sqlite_path
        said = str(error.orig)
        if sqlite_path is not None and "file is not a database" in said:
            return (
                f"{sqlite_path} is not a SQLite database: point {database_url_variable()} at jukebot's "
                "database file, or at a new file name to start an empty one."
            )
        if sqlite_path is not None and "database is locked" in said:
            from storage.engine import sqlite_timeout_seconds

            return (
                f"The database at {shown} timed out: another process held its write lock past SQLite's "
                f"{sqlite_timeout_seconds(settings.database_url):g} s (a jukebot run or worker busy "
                "writing, or another program with the file open in a transaction); try again, or stop "
                "the process holding it."
            )
        if sqlite_path is not None and "readonly database" in said:
            return (
                f"{sqlite_path} cannot be written: this user may not write the file or its folder "
                f"{sqlite_path.parent} (SQLite writes its -wal and -shm files beside it); fix their "
                f"permissions, or point {database_url_variable()} at a file in a folder this user may write."
            )
    return None


def first_line(error: object) -> str:
    """The first line of what `error` says, or its type's name when it says nothing."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def require_current_schema(settings: Settings, missing: str) -> str | None:
    """Stop with one sentence unless the database exists, answers and is at the latest schema;
    returns that revision. Creates nothing: a SQLite file that does not exist yet is reported
    (`missing` says what that means, e.g. "it holds no jobs"), not made."""
    from sqlalchemy.exc import SQLAlchemyError

    from storage.migrate import check_known_revision, current_revision, head_revision

    where = settings.database_url_for_display
    head = head_revision()
    problem = sqlite_path_problem(settings)
    if problem is not None:
        raise click.ClickException(problem)
    if settings.sqlite_path is not None and not settings.sqlite_path.exists():
        raise click.ClickException(
            f"the database at {where} does not exist yet, so {missing}: run `jukebot db upgrade`, "
            "which creates it (jukebot run and jukebot worker do on start)"
        )
    try:
        current = current_revision(settings.database_url)
        check_known_revision(current)
    except Exception as exc:
        message = specific_database_problem(exc, settings)
        if message is not None:
            raise click.ClickException(message) from None
        if isinstance(exc, TimeoutError):
            raise click.ClickException(timed_out(settings)) from None
        if isinstance(exc, OSError):
            raise click.ClickException(cannot_reach(where, first_line(exc))) from None
        if not isinstance(exc, SQLAlchemyError):
            raise
        # (not "start it": e.g. a root certificate sslmode=verify-full wants that is not there)
        reason = first_line(getattr(exc, "orig", None) or exc)
        raise click.ClickException(f"The database at {where} failed: {reason}.") from None
    if current != head:
        raise click.ClickException(
            f"the database at {where} is at schema {current or 'none (no jukebot tables yet)'}, not {head}: "
            "run `jukebot db upgrade` (jukebot run and jukebot worker do on start)"
        )
    return head
