"""`jukebot db …`: database maintenance."""

from __future__ import annotations

import click

from jukebot.commands import settings_or_exit, upgrade_or_exit


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
    """Exit 0 when the database answers and is at the latest schema (the Docker health check)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from storage.migrate import current_revision, head_revision

    settings = settings_or_exit()
    where = make_url(settings.database_url).render_as_string(hide_password=True)
    try:
        current = current_revision(settings.database_url)
    except (OSError, SQLAlchemyError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        raise click.ClickException(f"cannot reach the database at {where}: {reason}") from None
    head = head_revision()
    if current != head:
        raise click.ClickException(
            f"the database at {where} is at schema {current or 'none (empty)'}, not {head}: "
            "run `jukebot db upgrade` (jukebot run and jukebot worker do on start)"
        )
    click.echo(f"the database at {where} answers and is at the latest schema ({head})")
