"""`jukebot` subcommands, one module per group; `jukebot.cli` adds each to the root group."""

from __future__ import annotations

import click

from jukebot.settings import Settings, SettingsError, load_settings


def settings_or_exit() -> Settings:
    """Load settings, or stop with the one sentence that says what to set."""
    try:
        return load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
