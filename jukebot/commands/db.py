"""`jukebot db …`: database maintenance."""

from __future__ import annotations

import click

from jukebot.commands import settings_or_exit, specific_database_problem, sqlite_path_problem, upgrade_or_exit


@click.group()
def db() -> None:
    """Database maintenance."""


@db.command()
def upgrade() -> None:
    """Apply every pending migration to the configured database."""
    upgrade_or_exit(settings_or_exit())
    click.echo("database is at the latest schema")


@db.command()
def check() -> None:
    """Exit 0 when the database answers and is at the latest schema (the Docker health check).

    Creates nothing: a SQLite file that does not exist yet is reported, not made.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from storage.migrate import check_known_revision, current_revision, head_revision

    settings = settings_or_exit()
    where = settings.database_url_for_display
    head = head_revision()
    problem = sqlite_path_problem(settings)
    if problem is not None:
        raise click.ClickException(problem)
    if settings.sqlite_path is not None and not settings.sqlite_path.exists():
        raise click.ClickException(
            f"the database at {where} does not exist yet, so is at schema none (empty), not {head}: "
            "run `jukebot db upgrade`, which creates it (jukebot run and jukebot worker do on start)"
        )
    try:
        current = current_revision(settings.database_url)
        check_known_revision(current)
    except Exception as exc:
        message = specific_database_problem(exc, settings)
        if message is not None:
            raise click.ClickException(message) from None
        if not isinstance(exc, OSError | SQLAlchemyError):
            raise
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise click.ClickException(f"cannot reach the database at {where}: {reason}") from None
    if current != head:
        raise click.ClickException(
            f"the database at {where} is at schema {current or 'none (empty)'}, not {head}: "
            "run `jukebot db upgrade` (jukebot run and jukebot worker do on start)"
        )
    click.echo(f"the database at {where} answers and is at the latest schema ({head})")
