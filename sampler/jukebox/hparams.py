"""Hparams as a sidecar's JSON gives them, checked against the config dataclass they build: a "64"
where a whole number belongs is said by name, not found as a TypeError deep inside a model."""

from __future__ import annotations

import functools
import types
import typing
from typing import Any


def hparam_type_problem(config: type, key: str, value: Any) -> str | None:
    """Why `value` (as JSON gives it: a sidecar's) cannot be `config`'s field `key`, e.g. "must be a
    whole number, not the string '64'"; None when it can, or when `config` has no such field."""
    hint = _type_hints(config).get(key)
    if hint is None or _fits(hint, value):
        return None
    return f"must be {_wanted(hint)}, not {_json_value(value)}"


_type_hints = functools.cache(typing.get_type_hints)


def _fits(hint: Any, value: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(arg, value) for arg in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(args[0], item) for item in value)
        return all(_fits(arg, item) for arg, item in zip(args, value, strict=False))  # the count: later
    return True  # a type this check does not know: the config's own checks


def _wanted(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_wanted(arg) for arg in args)
    if origin is tuple:
        return f"an array of {_wanted(args[0]).removeprefix('a ').removeprefix('an ')}s"
    return {type(None): "null", bool: "true or false", int: "a whole number", float: "a number"}.get(
        hint, str(hint)
    )


def _json_value(value: Any) -> str:
    """`value` as its JSON reads, for a message."""
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, list | tuple):
        return "an array" if all(isinstance(v, int | float) for v in value) else f"the array {list(value)!r}"
    if isinstance(value, dict):
        return "an object"
    return repr(value)
