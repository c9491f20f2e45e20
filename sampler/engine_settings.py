"""The sampling engine's operator switches: the decode loop (`sampler.jukebox.decoding`) and levels
sampled at once (`sampler.jukebox.schedule`). "auto" leaves each to the device's default.

Torch-free: the settings validate them here (`parse_choice` for every choice of the kind, priors'
residency too); the runner turns them into engine options.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, TypeVar, get_args

DecodePath = Literal["sliced", "static", "graph"]
DECODE_PATHS: tuple[DecodePath, ...] = get_args(DecodePath)
DecodePathSetting = Literal["auto", "sliced", "static", "graph"]
DECODE_PATH_SETTINGS: tuple[DecodePathSetting, ...] = get_args(DecodePathSetting)
DecodeKernels = Literal["torch", "triton"]
DECODE_KERNELS: tuple[DecodeKernels, ...] = get_args(DecodeKernels)
DecodeKernelsSetting = Literal["auto", "torch", "triton"]
DECODE_KERNELS_SETTINGS: tuple[DecodeKernelsSetting, ...] = get_args(DecodeKernelsSetting)
Switch = Literal["auto", "on", "off"]
SWITCHES: tuple[Switch, ...] = get_args(Switch)
AUTO: Literal["auto"] = "auto"
# what a switch also accepts, as runner options long did (decode_compile=0|1)
_SWITCH_ALIASES: dict[str, Switch] = {"1": "on", "true": "on", "0": "off", "false": "off"}


Choice = TypeVar("Choice", bound=str)


def parse_choice(
    name: str, text: str, choices: tuple[Choice, ...], aliases: Mapping[str, Choice] | None = None
) -> Choice:
    """One of `choices` (any case, spaces around ignored, `aliases` mapped); ValueError naming the
    setting and saying what to write."""
    value = text.strip().lower()
    if aliases is not None and value in aliases:
        return aliases[value]
    for choice in choices:
        if value == choice:
            return choice
    raise ValueError(f"{name} must be one of {', '.join(choices)}, got {text!r}")


def parse_decode_path(text: str) -> DecodePathSetting:
    """`auto`, `sliced`, `static` or `graph`."""
    return parse_choice("decode_path", text, DECODE_PATH_SETTINGS)


def parse_decode_kernels(text: str) -> DecodeKernelsSetting:
    """`auto`, `torch` or `triton`."""
    return parse_choice("decode_kernels", text, DECODE_KERNELS_SETTINGS)


def parse_switch(name: str, text: str) -> Switch:
    """`auto`, `on` or `off` (also 1/0, true/false)."""
    return parse_choice(name, text, SWITCHES, _SWITCH_ALIASES)


def switch_value(switch: Switch) -> bool | None:
    """on → True, off → False, auto → None (the device's default)."""
    return None if switch == AUTO else switch == "on"
