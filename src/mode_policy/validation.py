"""Type and range checks of dataclass config fields, run once where a config is built
(command line, ``config.json``, Python), each failure naming the field and what it allows."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from .errors import ConfigError


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", str(annotation)).replace("typing.", "")


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """``value`` checked against ``annotation`` (int -> float widened); ConfigError otherwise."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(name, value, inner[0]) if len(inner) == 1 else value
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, annotation):
            raise ConfigError(f"{name}: expected a {annotation.__name__}, got {type(value).__name__}")
        return value
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}={value!r}: expected true or false")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}={value!r}: expected an integer")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name}={value!r}: expected a number")
        if not math.isfinite(value):
            raise ConfigError(f"{name}={value!r}: expected a finite number")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}={value!r}: expected a string")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}={value!r}: expected a list")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{name}={value!r}: expected {len(args)} values")
            return tuple(_coerce(f"{name}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        items = [_coerce(f"{name}[{i}]", v, item) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}={value!r}: expected a mapping")
        return value
    return value


def check_field_types(obj: Any) -> None:
    """Check (and widen int -> float) every field of dataclass ``obj`` in place."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = _coerce(f.name, getattr(obj, f.name), hints[f.name])
        object.__setattr__(obj, f.name, value)


def check_range(
    obj: Any,
    name: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """ConfigError unless ``low <= obj.name <= high`` (open ends exclude the bound)."""
    value = getattr(obj, name)
    ok = (low is None or (value > low if low_open else value >= low)) and (
        high is None or (value < high if high_open else value <= high)
    )
    if not ok:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise ConfigError(f"{name}={value!r}: must be in {interval}")


def check_choice(obj: Any, name: str, choices: typing.Iterable[str]) -> None:
    value, choices = getattr(obj, name), tuple(choices)
    if value not in choices:
        raise ConfigError(f"{name}={value!r}: expected one of {', '.join(choices)}")
