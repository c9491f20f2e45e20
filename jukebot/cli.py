"""The `jukebot` command line."""

from __future__ import annotations

import errno
import io
import os
import sys
from typing import Any, NoReturn

import click

from jukebot import __version__
from jukebot.commands import raised_by_output
from jukebot.commands.curate import curate
from jukebot.commands.db import db
from jukebot.commands.doctor import doctor
from jukebot.commands.jobs import jobs
from jukebot.commands.models import models
from jukebot.commands.sample import sample
from jukebot.commands.serve import run, worker
from jukebot.commands.workers import workers


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


class _ClosedOutput(io.TextIOBase):
    """Standard output when the command was started with it closed (`>&-`, so Python has none): writing
    a result to it fails, as to a closed file, instead of click printing nothing and exiting 0."""

    encoding = "utf-8"
    errors = "strict"

    def writable(self) -> bool:
        return True

    def write(self, _text: str) -> int:
        raise OSError(errno.EBADF, "it is closed")


class _Jukebot(click.Group):
    """The root group; its `main` (the console script) turns a failure to write the output into one line."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        if sys.stdout is None:
            sys.stdout = _ClosedOutput()
        try:
            return super().main(*args, **kwargs)
        except OSError as exc:
            # click exits quietly (1) on EPIPE, the reader gone (`| head -1`); any other error writing
            # the output (a full disk, a closed stdout) would be a traceback, or a silent success.
            if not kwargs.get("standalone_mode", True) or not raised_by_output(exc):
                raise
            _output_failed(exc)


def _output_failed(error: OSError) -> NoReturn:
    """Say in one line on stderr that the output could not be written, and exit 1."""
    reason = error.strerror or str(error) or type(error).__name__
    stdout_fd = None
    if sys.stdout is sys.__stdout__ and sys.__stdout__ is not None:  # the process's own (not a test's)
        try:
            stdout_fd = sys.__stdout__.fileno()
        except (OSError, ValueError):
            stdout_fd = None
    if stdout_fd is not None:
        # What stays buffered would fail again when Python flushes it on exit (a second error, a traceback).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stdout_fd)
        os.close(devnull)
    try:
        click.echo(
            f"Error: cannot write to standard output ({reason}), so this command's output is missing "
            "or incomplete.",
            err=True,
        )
    except OSError:
        pass
    sys.exit(1)


@click.group(cls=_Jukebot, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="jukebot")
def main() -> None:
    """jukebot: OpenAI Jukebox in your Discord server."""


def _add_verbose(command: click.Command) -> None:
    command.params.append(verbose_option())
    if isinstance(command, click.Group):
        for child in command.commands.values():
            _add_verbose(child)


for _command in (curate, db, doctor, jobs, models, sample, run, worker, workers):
    main.add_command(_command)
_add_verbose(main)
