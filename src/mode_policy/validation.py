"""Config values as every reader takes them: numbers in config text (the command line, YAML and
JSON files), and type and range checks of dataclass config fields, run once where a config is
built (command line, ``config.json``, Python), each failure naming the field and what it allows.

Numbers as every config reader reads them: the command line, ``--config_path`` files, mixture
and study files, and the JSON a run or a model keeps.

The command line reads each flag's value as YAML (draccus), and a float field then takes any text
``float()`` reads, so ``--lr=1e-3`` is 0.001. YAML 1.1 on its own reads ``1e-3`` as text (its
floats need a dot): :func:`load_yaml` reads it as a float, as the command line does (and as YAML 1.2
does), so ``weight: 1e-3`` in a mixture file is the number ``--lr=1e-3`` is.

Every reader also refuses a number that is not the number written: a float literal beyond a
64-bit float (``1e999`` overflows to inf), a non-zero one below it (``1e-400`` underflows to 0),
and an integer beyond a 64-bit integer (torch and numpy cannot hold it). :func:`number_problem`
says which, for the command line (:func:`mode_policy.cli.parsing.parse_command`), the YAML loader
and :func:`loads_json`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
import types
import typing
from typing import Any

import yaml

from .errors import ConfigError

INT64_MAX = 2**63 - 1

_FLOAT_TEXT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?$")
_INT_TEXT = re.compile(r"^[-+]?[0-9][0-9_]*$")
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$")
"""Floats YAML 1.1 reads as text: an exponent with no dot (``1e-3``) or with no sign (``1.5e3``)."""


def number_problem(text: str) -> str | None:
    """Why the decimal number written ``text`` would not be the number read, or None (also None
    for text that is not a decimal number: the reader's own rules judge it)."""
    text = text.strip()
    if _INT_TEXT.match(text):
        value = int(text.replace("_", ""))
        return None if abs(value) <= INT64_MAX else "does not fit a 64-bit integer (at most 9223372036854775807)"
    if not _FLOAT_TEXT.match(text):
        return None
    value = float(text.replace("_", ""))
    if math.isinf(value):
        return "overflows a 64-bit float (at most about 1.8e308)"
    mantissa = re.split(r"[eE]", text)[0]
    if value == 0.0 and any(c in "123456789" for c in mantissa):
        return "underflows to 0 in a 64-bit float (the smallest is about 2.2e-308)"
    if 0.0 < abs(value) < sys.float_info.min:
        return "is below the smallest normal 64-bit float (about 2.2e-308)"
    return None


def check_number(text: str, where: str) -> None:
    """ConfigError naming ``where`` when :func:`number_problem` finds one in ``text``."""
    problem = number_problem(text)
    if problem is not None:
        raise ConfigError(f"{where}: {text.strip()} {problem}")


class ConfigLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` reading numbers as the command line does (``1e-3`` is a float) and
    refusing those that overflow or underflow (ConfigError naming the line)."""


ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))


class _NumberError(ConfigError):
    def __init__(self, line: int, text: str, problem: str) -> None:
        super().__init__(f"line {line}: {text} {problem}")
        self.line, self.text, self.problem = line, text, problem


def _checked(construct):
    def constructor(loader: ConfigLoader, node: yaml.ScalarNode) -> Any:
        problem = number_problem(str(node.value))
        if problem is not None:
            raise _NumberError(node.start_mark.line + 1, str(node.value).strip(), problem)
        return construct(loader, node)

    return constructor


ConfigLoader.add_constructor("tag:yaml.org,2002:float", _checked(yaml.SafeLoader.construct_yaml_float))
ConfigLoader.add_constructor("tag:yaml.org,2002:int", _checked(yaml.SafeLoader.construct_yaml_int))


def load_yaml(text: str, where: str) -> Any:
    """The YAML (or JSON) document ``text`` read by :class:`ConfigLoader`; yaml.YAMLError for text
    that is not YAML, ConfigError (``where, line N: ...``; no line for one line of text) for a number that does not fit."""
    try:
        return yaml.load(text, ConfigLoader)  # noqa: S506 - a SafeLoader
    except _NumberError as err:
        line = f", line {err.line}" if "\n" in text.strip() else ""
        raise ConfigError(f"{where}{line}: {err.text} {err.problem}") from None


def loads_json(text: str, where: str) -> Any:
    """``json.loads(text)`` with the numbers checked as :func:`load_yaml` checks them (a
    json.JSONDecodeError for text that is not JSON)."""

    def number(kind):
        def parse(literal: str):
            check_number(literal, where)
            return kind(literal)

        return parse

    return json.loads(text, parse_float=number(float), parse_int=number(int))


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
        if abs(value) > INT64_MAX:
            raise ConfigError(f"{name}={value}: does not fit a 64-bit integer (at most {INT64_MAX})")
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
