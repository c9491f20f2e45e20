"""The `jukebot` command line."""

from __future__ import annotations

import os

import click

from jukebot import __version__
from jukebot.commands.curate import curate
from jukebot.commands.db import db
from jukebot.commands.doctor import doctor
from jukebot.commands.jobs import jobs
from jukebot.commands.models import models
from jukebot.commands.sample import sample
from jukebot.commands.serve import run, worker


def _verbose(_ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    # The same as JUKEBOT_LOG_LEVEL=DEBUG: settings read it, and worker processes get it from them.
    if value:
        os.environ["JUKEBOT_LOG_LEVEL"] = "DEBUG"


def verbose_option() -> click.Option:
    """`-v` before or after the subcommand."""
    return click.Option(
        ["-v", "--verbose"],
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_verbose,
        help="Log debug messages (JUKEBOT_LOG_LEVEL=DEBUG).",
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="jukebot")
def main() -> None:
    """jukebot: OpenAI Jukebox in your Discord server."""


def _add_verbose(command: click.Command) -> None:
    command.params.append(verbose_option())
    if isinstance(command, click.Group):
        for child in command.commands.values():
            _add_verbose(child)


for _command in (curate, db, doctor, jobs, models, sample, run, worker):
    main.add_command(_command)
_add_verbose(main)
