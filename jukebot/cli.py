"""The `jukebot` command line."""

from __future__ import annotations

import logging

import click

from jukebot import __version__
from jukebot.commands.db import db
from jukebot.settings import Settings, SettingsError, load_settings


def settings_or_exit() -> Settings:
    """Load settings, or stop with the one sentence that says what to set."""
    try:
        return load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="jukebot")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """jukebot: OpenAI Jukebox in your Discord server."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


main.add_command(db)
