"""`jukebot db …`: database maintenance."""

from __future__ import annotations

import click

from jukebot.commands import require_current_schema, settings_or_exit, upgrade_or_exit


@click.group()
def db() -> None:
    """Database maintenance."""


@db.command()
def upgrade() -> None:
    """Apply every pending migration to the configured database, saying whether there was any."""
    from storage.migrate import head_revision

    settings = settings_or_exit()
    before, head = upgrade_or_exit(settings), head_revision()
    where = f"the database at {settings.database_url_for_display}"
    if before == head:
        click.echo(f"{where} is already at the latest schema ({head}): nothing to migrate")
    else:
        click.echo(
            f"{where} was at schema {before or 'none (no jukebot tables yet)'} and is now at the latest "
            f"schema ({head})"
        )


@db.command()
def check() -> None:
    """Exit 0 when the database answers and is at the latest schema (the Docker health check).

    Creates nothing: a SQLite file that does not exist yet is reported, not made.
    """
    from storage.migrate import head_revision

    settings = settings_or_exit()
    head = require_current_schema(
        settings, f"is at schema none (no jukebot tables yet), not {head_revision()}"
    )
    click.echo(
        f"the database at {settings.database_url_for_display} answers and is at the latest schema ({head})"
    )
