"""The `jukebot` command line."""

from __future__ import annotations

import logging

import click

from jukebot import __version__
from jukebot.commands.curate import curate
from jukebot.commands.db import db
from jukebot.commands.models import models
from jukebot.commands.sample import sample
from jukebot.commands.serve import run, worker


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="jukebot")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """jukebot: OpenAI Jukebox in your Discord server."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


main.add_command(curate)
main.add_command(db)
main.add_command(models)
main.add_command(sample)
main.add_command(run)
main.add_command(worker)
