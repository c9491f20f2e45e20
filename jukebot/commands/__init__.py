"""`jukebot` subcommands, one module per group; `jukebot.cli` adds each to the root group."""

from __future__ import annotations

import importlib.util

import click

from jukebot.settings import Settings, SettingsError, load_settings


def settings_or_exit() -> Settings:
    """Load settings, or stop with the one sentence that says what to set."""
    try:
        return load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None


def require_torch(what: str) -> None:
    """Stop with one sentence when torch (the `worker` extra) is not installed: a bot-only host has none."""
    if importlib.util.find_spec("torch") is None:
        raise click.ClickException(
            f"{what} need torch, which is not installed here: install the worker extra "
            "(pip install 'jukebot[worker]'; scripts/run.sh does unless JUKEBOT_TORCH=skip), "
            "or set JUKEBOT_GPUS=none to run the bot alone, with workers on other machines."
        )
