"""`jukebot db …`: database maintenance."""

from __future__ import annotations

import click

from jukebot.commands import settings_or_exit


@click.group()
def db() -> None:
    """Database maintenance."""


@db.command()
def upgrade() -> None:
    """Apply every pending migration to the configured database."""
    from storage.migrate import upgrade_to_head

    settings = settings_or_exit()
    upgrade_to_head(settings.database_url)
    click.echo("database is at the latest schema")
