"""The sampling engine's operator switches: the decode loop (`sampler.jukebox.decoding`) and levels
sampled at once (`sampler.jukebox.schedule`). "auto" leaves each to the device's default.

Torch-free: the settings validate them here; the runner turns them into engine options.
"""

from __future__ import annotations

from typing import Literal, get_args

DecodePath = Literal["sliced", "static", "graph"]
DECODE_PATHS: tuple[DecodePath, ...] = get_args(DecodePath)
DecodePathSetting = Literal["auto", "sliced", "static", "graph"]
Switch = Literal["auto", "on", "off"]
SWITCHES: tuple[Switch, ...] = get_args(Switch)
AUTO: Literal["auto"] = "auto"
# what a switch also accepts, as runner options long did (decode_compile=0|1)
_SWITCH_ALIASES: dict[str, Switch] = {"1": "on", "true": "on", "0": "off", "false": "off"}


def parse_decode_path(text: str) -> DecodePathSetting:
    """`auto`, `sliced`, `static` or `graph` (any case); ValueError saying what to write."""
    value = text.strip().lower()
    for choice in (AUTO, *DECODE_PATHS):
        if value == choice:
            return choice
    raise ValueError(f"decode_path must be one of {', '.join((AUTO, *DECODE_PATHS))}, got {text!r}")


def parse_switch(name: str, text: str) -> Switch:
    """`auto`, `on` or `off` (any case; also 1/0, true/false); ValueError naming the setting."""
    value = text.strip().lower()
    value = _SWITCH_ALIASES.get(value, value)
    for choice in SWITCHES:
        if value == choice:
            return choice
    raise ValueError(f"{name} must be one of {', '.join(SWITCHES)}, got {text!r}")


def switch_value(switch: Switch) -> bool | None:
    """on → True, off → False, auto → None (the device's default)."""
    return None if switch == AUTO else switch == "on"
