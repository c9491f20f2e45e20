"""`jukebot db …`: database maintenance."""

from __future__ import annotations

import click

from jukebot.commands import require_current_schema, settings_or_exit, upgrade_or_exit


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
    from storage.migrate import head_revision

    settings = settings_or_exit()
    head = require_current_schema(settings, f"is at schema none (empty), not {head_revision()}")
    click.echo(
        f"the database at {settings.database_url_for_display} answers and is at the latest schema ({head})"
    )
