"""Command-line flags generated from dataclass configs, with draccus (the parser LeRobot uses).

Each field of a command's dataclass is a flag: ``--steps=2000``, nested ones with dots
(``--policy.d_model=128``); values are YAML (``--policy.image_keys=[a,b]``,
``--betas=[0.9,0.95]``, ``--resume=true``); ``--help`` shows every field's docstring.
Beyond plain draccus:

* ``--name-with-dashes`` is accepted for ``--name_with_dashes``;
* a command may take leading positional arguments, mapped onto named fields, and
  short aliases of flags (``train --out`` for ``--output_dir``);
* a named preset fills the ``policy`` defaults before the flags apply, so
  ``--preset=cpu --policy.d_model=64`` is the cpu preset with d=64;
* ``--config_path=FILE`` (YAML or JSON) sets any fields, under the flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import tempfile
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import draccus
import yaml
from draccus.utils import DraccusException

from ..errors import ConfigError, ModePolicyError
from ..model.config import PRESETS, get_preset
from ..validation import load_yaml

T = TypeVar("T")


def normalise_flags(argv: Sequence[str]) -> list[str]:
    """``--a-b.c-d=x`` -> ``--a_b.c_d=x`` (names only, never values)."""
    out = []
    for arg in argv:
        if arg.startswith("--"):
            name, sep, value = arg[2:].partition("=")
            arg = "--" + name.replace("-", "_") + sep + value
        out.append(arg)
    return out


def _flag_value(argv: list[str], name: str) -> str | None:
    """The value of ``--name=v`` or ``--name v`` in ``argv`` (the last one wins), else None."""
    value = None
    for i, arg in enumerate(argv):
        if arg == f"--{name}" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
    return value


def _pop_flag(argv: list[str], name: str) -> tuple[list[str], str | None]:
    value = _flag_value(argv, name)
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == f"--{name}":
            skip = True
            continue
        if arg.startswith(f"--{name}="):
            continue
        kept.append(arg)
    return kept, value


def _preset_paths(cls: type) -> list[str]:
    """Dotted prefixes of the (nested) dataclasses in ``cls`` with both ``preset`` and ``policy`` fields."""
    paths = []

    def walk(c: type, prefix: str) -> None:
        names = {f.name for f in dataclasses.fields(c)}
        if {"preset", "policy"} <= names:
            paths.append(prefix)
        hints = _field_types(c)
        for f in dataclasses.fields(c):
            sub = hints.get(f.name)
            if dataclasses.is_dataclass(sub) and f.name != "policy":
                walk(sub, f"{prefix}{f.name}.")

    walk(cls, "")
    return paths


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _dataclass_of(annotation: Any) -> type | None:
    """The dataclass in ``annotation`` (``X`` or ``X | None``), else None."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    for arg in typing.get_args(annotation):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def flag_types(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every flag name of ``cls`` (dotted for nested dataclasses) -> its annotation."""
    out: dict[str, Any] = {}
    for name, annotation in _field_types(cls).items():
        if name not in {f.name for f in dataclasses.fields(cls)}:
            continue
        sub = _dataclass_of(annotation)
        if sub is not None:
            out.update(flag_types(sub, f"{prefix}{name}."))
        else:
            out[f"{prefix}{name}"] = annotation
    return out


def expand_bare_booleans(argv: list[str], flags: dict[str, Any]) -> list[str]:
    """A boolean flag given alone (``--resume``) means ``--resume=true``."""
    out = []
    for i, arg in enumerate(argv):
        name = arg[2:] if arg.startswith("--") and "=" not in arg else None
        following = argv[i + 1] if i + 1 < len(argv) else None
        if name is not None and flags.get(name) is bool and (following is None or following.startswith("--")):
            arg = f"{arg}=true"
        out.append(arg)
    return out


def _numeric(annotation: Any) -> bool:
    """Whether a flag of ``annotation`` holds numbers (``float``, ``int | None``, ``tuple[float, float]``...)."""
    if annotation in (int, float):
        return True
    return any(_numeric(arg) for arg in typing.get_args(annotation) if arg is not bool)


def check_numeric_flags(argv: list[str], flags: dict[str, Any]) -> None:
    """ConfigError for a number flag whose value overflows or underflows (``--lr=1e-400`` is not
    0.0), read as the YAML files read it (:func:`mode_policy.validation.load_yaml`)."""
    for i, arg in enumerate(argv):
        if not arg.startswith("--"):
            continue
        name, sep, value = arg[2:].partition("=")
        if not sep:
            following = argv[i + 1] if i + 1 < len(argv) else None
            if following is None or following.startswith("--"):
                continue
            value = following
        if name in flags and _numeric(flags[name]):
            try:
                load_yaml(value, f"--{name}={value}")
            except yaml.YAMLError:
                pass  # not YAML: draccus names the problem


def _user_error(err: BaseException) -> ModePolicyError | None:
    """The project's error behind a draccus error (raised by a config's validation), if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, ModePolicyError):
            return err
        err = err.__cause__ or err.__context__
    return None


def _unknown_flag_hint(message: str, flags: dict[str, Any]) -> str:
    words = [w.split("=", 1)[0][2:] for w in message.split() if w.startswith("--")]
    hints = []
    for word in words:
        close = difflib.get_close_matches(word, list(flags), n=1)
        if close:
            hints.append(f"--{word}: did you mean --{close[0]}?")
    return f" ({'; '.join(hints)})" if hints else ""


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _nested(prefix: str, value: dict) -> dict:
    for part in reversed([p for p in prefix.split(".") if p]):
        value = {part: value}
    return value


def _lookup(data: dict, dotted: str) -> Any:
    for part in [p for p in dotted.split(".") if p]:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def parse_command(
    cls: type[T],
    argv: Sequence[str],
    prog: str,
    defaults: dict[str, Any] | None = None,
    positional: Sequence[str] = (),
    aliases: dict[str, str] | None = None,
) -> T:
    """Parse ``argv`` into a ``cls`` instance; ``defaults`` (a nested dict) sits under the flags.

    ConfigError for anything that does not fit (unknown flag, bad value, unknown preset);
    ``--help`` prints the generated help and exits.
    """
    args = normalise_flags(argv)
    for short, name in (aliases or {}).items():
        args = [
            f"--{name}" + a[len(short) + 2 :] if a == f"--{short}" or a.startswith(f"--{short}=") else a for a in args
        ]
    leading = []
    while args and not args[0].startswith("-") and len(leading) < len(positional):
        leading.append(args.pop(0))
    args = [f"--{name}={value}" for name, value in zip(positional, leading)] + args
    file_values: dict[str, Any] = dict(defaults or {})
    args, config_path = _pop_flag(args, "config_path")
    user_file: dict[str, Any] = {}
    if config_path is not None:
        try:
            user_file = load_yaml(Path(config_path).read_text(encoding="utf-8"), f"--config_path {config_path}") or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise ConfigError(f"--config_path {config_path}: cannot read it ({' '.join(str(err).split())})") from None
        if not isinstance(user_file, dict):
            raise ConfigError(f"--config_path {config_path}: expected a mapping of field names to values")
    for prefix in _preset_paths(cls):
        name = (
            _flag_value(args, f"{prefix}preset")
            or _lookup(user_file, f"{prefix}preset")
            or _lookup(file_values, f"{prefix}preset")
        )
        if name is None:
            name = next(f.default for f in dataclasses.fields(_resolve(cls, prefix)) if f.name == "preset")
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}: choose from {', '.join(PRESETS)}")
        file_values = _deep_merge(file_values, _nested(prefix, {"policy": get_preset(name).to_dict()}))
    file_values = _deep_merge(file_values, user_file)
    flags = flag_types(cls)
    args = expand_bare_booleans(args, flags)
    check_numeric_flags(args, flags)
    given = {a[2:].split("=", 1)[0] for a in args if a.startswith("--")} | set(_dotted_keys(user_file))
    fd, tmp = tempfile.mkstemp(prefix="mode-policy-defaults.", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(file_values, f)
        options = draccus.parse(cls, config_path=tmp, args=args, prog=prog, exit_on_error=False)
        object.__setattr__(options, GIVEN_ATTRIBUTE, frozenset(given))
        return options
    except (DraccusException, argparse.ArgumentError, TypeError) as err:
        cause = _user_error(err)
        if cause is not None:
            raise cause from None
        message = " ".join(str(err).split())
        if "unrecognized arguments" in message:
            message += _unknown_flag_hint(message, flags)
        raise ConfigError(f"{message} (see --help)") from None
    finally:
        os.unlink(tmp)


GIVEN_ATTRIBUTE = "_mode_policy_given_flags"


def _dotted_keys(data: dict, prefix: str = "") -> list[str]:
    """``{"policy": {"d_model": 64}, "lr": 1}`` -> ``["policy", "policy.d_model", "lr"]``."""
    keys = []
    for key, value in data.items():
        keys.append(f"{prefix}{key}")
        if isinstance(value, dict):
            keys += _dotted_keys(value, f"{prefix}{key}.")
    return keys


def given_flags(options: Any) -> frozenset[str] | None:
    """The flags the user gave for ``options`` (dotted names, from the command line, its positional
    arguments and ``--config_path``; not the command's defaults), or None when ``options`` did not
    come from :func:`parse_command`."""
    return getattr(options, GIVEN_ATTRIBUTE, None)


def _resolve(cls: type, prefix: str) -> type:
    for part in [p for p in prefix.split(".") if p]:
        cls = _field_types(cls)[part]
    return cls
