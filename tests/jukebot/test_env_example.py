""".env.example lists every setting, and what it shows is valid and (where it says so) the default."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import AliasChoices

from jukebot.settings import Settings, load_settings

EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"
# Lines that show an example rather than the default (the default depends on the machine, or is empty).
EXAMPLES_NOT_DEFAULTS = {"DISCORD_TOKEN", "DATABASE_URL", "JUKEBOT_MODEL_DIR", "JUKEBOT_ALLOWED_CHANNELS"}


def _env_names(field: str) -> list[str]:
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return [str(choice) for choice in alias.choices]
    return [f"{Settings.model_config.get('env_prefix', '')}{field}".upper()]


def _example_lines() -> dict[str, str]:
    """NAME -> value for every `NAME=value` line, commented out or not."""
    found = re.findall(r"^(?:# )?([A-Z][A-Z0-9_]*)=(.*)$", EXAMPLE.read_text(), flags=re.MULTILINE)
    return dict(found)


def test_every_setting_is_in_the_example() -> None:
    listed = _example_lines()
    missing = [field for field in Settings.model_fields if not set(_env_names(field)) & set(listed)]
    assert not missing, f".env.example lacks {missing}"
    known = {name for field in Settings.model_fields for name in _env_names(field)}
    assert set(listed) <= known, f".env.example shows unknown settings {sorted(set(listed) - known)}"


def test_the_example_values_load_and_show_the_defaults(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listed = _example_lines()
    for name, value in listed.items():
        monkeypatch.setenv(name, value)
    from_example = load_settings()
    for name in listed:
        monkeypatch.delenv(name)
    defaults = load_settings()
    for field in Settings.model_fields:
        name = next(name for name in _env_names(field) if name in listed)
        if name not in EXAMPLES_NOT_DEFAULTS:
            shown, default = getattr(from_example, field), getattr(defaults, field)
            assert shown == default, f".env.example shows {name}={listed[name]}, the default is {default!r}"
