"""`jukebot` subcommands, one module per group; `jukebot.cli` adds each to the root group."""

from __future__ import annotations

import importlib.util
import logging

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from jukebot.settings import Settings, SettingsError, load_settings
from sampler.worker.logs import configure_logging

log = logging.getLogger(__name__)

# Postgres SQLSTATEs an operator fixes in DATABASE_URL or on the server.
_NO_SUCH_DATABASE = "3D000"
_LOGIN_REFUSED = ("28000", "28P01")


def settings_or_exit() -> Settings:
    """Load settings (and log as they say), or stop with the one sentence that says what to set."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(settings.log_level, settings.log_format)
    shown = settings.model_dump() | {"database_url": settings.database_url_for_display}  # token: SecretStr
    log.debug("settings: %s", shown)
    return settings


# What a bot-only host (no `worker` extra) cannot do, as `require_torch` names it.
TORCH_USERS = "Model files (verifying, importing) and offline sampling"


def require_torch(what: str) -> None:
    """Stop with one sentence when torch (the `worker` extra) is not installed: a bot-only host has none."""
    if importlib.util.find_spec("torch") is None:
        raise click.ClickException(
            f"{what} need torch, which is not installed here: install the worker extra "
            "(pip install 'jukebot[worker]'; scripts/run.sh does unless JUKEBOT_TORCH=skip), "
            "or set JUKEBOT_GPUS=none to run the bot alone, with workers on other machines."
        )


def upgrade_or_exit(settings: Settings) -> None:
    """Migrate the database to the latest schema, or stop with the sentence that says what to fix."""
    from storage.migrate import upgrade_to_head

    try:
        upgrade_to_head(settings.database_url)
    except Exception as exc:
        message = database_problem(exc, settings)
        if message is None:
            raise
        raise click.ClickException(message) from None


def database_problem(error: BaseException, settings: Settings) -> str | None:
    """One sentence with the fix for a database that cannot be used, or None for anything else.

    Never shows the password: the URL is the settings' display form.
    """
    shown = settings.database_url_for_display
    if isinstance(error, DBAPIError):
        code = getattr(error.orig, "sqlstate", None)
        url = make_url(settings.database_url)
        if code == _NO_SUCH_DATABASE:
            return (
                f"Database {url.database!r} does not exist on {url.host}: create it "
                f"(e.g. `createdb {url.database}`) or point DATABASE_URL at another one ({shown})."
            )
        if code in _LOGIN_REFUSED:
            return (
                f"Postgres refused user {url.username!r} ({_first_line(error.orig)}): "
                f"fix the user or password in DATABASE_URL ({shown})."
            )
        return f"The database at {shown} failed: {_first_line(error.orig)}."
    if isinstance(error, OSError):
        return f"Cannot reach the database at {shown} ({_first_line(error)}): start it or fix DATABASE_URL."
    return None


def _first_line(error: object) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
