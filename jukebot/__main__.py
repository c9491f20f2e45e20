"""The `jukebot` command (and `python -m jukebot`). Loading the command line takes a few seconds (torch,
SQLAlchemy, pydantic): a Ctrl-C meanwhile ends it as click ends a command it interrupts, without a
traceback of whichever import it cut short."""

from __future__ import annotations

import sys


def run() -> None:
    try:
        from jukebot.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("Aborted!\n")
        raise SystemExit(130) from None
    main(prog_name="jukebot")


if __name__ == "__main__":
    run()
