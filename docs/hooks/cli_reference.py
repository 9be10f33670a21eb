"""mkdocs hook: the command-line reference, generated from the commands' dataclass configs.

``docs/reference/cli.md`` holds the marker ``<!-- cli-reference -->``; at build time this hook
replaces it with one section per ``mode-policy`` sub-command (usage, positional arguments,
short aliases and a table of every flag: name, type, default, docstring) and one section per
nested config (``--policy.*``: ``MoDEConfig``, ``--train.*``: ``TrainConfig``, ...).

The registry is ``mode_policy.cli.main.all_commands()`` (``_commands()`` in older trees). Field
docstrings come from draccus, the same functions that ``mode-policy COMMAND --help`` uses.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

MARKER = "<!-- cli-reference -->"
ROOT = Path(__file__).resolve().parents[2]


def _registry() -> dict[str, Any]:
    """The sub-commands, name -> Command, from the working tree's package."""
    src = str(ROOT / "src")
    if src not in sys.path:
        sys.path.insert(0, src)
    return importlib.import_module("mode_policy.cli.main").all_commands()


def _dataclass_of(annotation: Any) -> type | None:
    """The dataclass in ``annotation`` (``X`` or ``X | None``), as the command line reads it."""
    return importlib.import_module("mode_policy.cli.parsing")._dataclass_of(annotation)


def _help_text(cls: type, name: str) -> str:
    """A field's help, as ``--help`` shows it (draccus: inline comment, docstring below, comment above)."""
    from draccus.wrappers import docstring

    try:
        doc = docstring.get_attribute_docstring(cls, name)
    except (OSError, RuntimeWarning, TypeError):
        return ""
    return docstring.get_preferred_help_text(doc, docstring.HelpOrder.inline) or ""


def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "None"
    if annotation is Ellipsis:
        return "..."
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin).replace("typing.", ""))
        return f"{name}[{', '.join(_type_name(a) for a in args)}]" if args else name
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _code(text: str) -> str:
    """Inline code for a table cell (pipes inside backticks do not split cells)."""
    text = text.replace("`", "'")
    return f"`{text}`" if text else ""


def _cell(text: str) -> str:
    """Docstring text for a table cell: one line, reST literals as Markdown, pipes escaped."""
    text = " ".join(text.split()).replace("``", "`")
    text = re.sub(r":\w+:(`[^`]+`)", r"\1", text)  # reST roles (:mod:`x`) as plain code
    return text.replace("|", "\\|")


def _anchor(cls: type) -> str:
    return f"config-{cls.__name__.lower()}"


def _table(cls: type, overrides: dict[str, Any], prefix: str | None = "") -> list[str]:
    """The flag table of ``cls``: flags ``--{prefix}{field}``, or bare field names when ``prefix`` is None.

    A nested dataclass gets one row that links to its own section.
    """
    hints = typing.get_type_hints(cls)
    rows = [f"| {'field' if prefix is None else 'flag'} | type | default | description |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        annotation = hints.get(f.name, f.type)
        sub = _dataclass_of(annotation)
        flag = f.name if prefix is None else f"--{prefix}{f.name}"
        help_text = _cell(_help_text(cls, f.name))
        if sub is not None:
            link = f"every field of [`{sub.__name__}`](#{_anchor(sub)})"
            if prefix is not None:
                link += f" as `{flag}.FIELD`"
            rows.append(f"| `{flag}` | {_code(_type_name(annotation))} | | {help_text} ({link}) |")
            continue
        default = _default(f)
        shown = "required" if default is dataclasses.MISSING else _code(repr(default))
        if f.name in overrides and not isinstance(overrides[f.name], dict):
            shown = f"{_code(repr(overrides[f.name]))} (this command; field default {shown})"
        rows.append(f"| `{flag}` | {_code(_type_name(annotation))} | {shown} | {help_text} |")
    return rows


def _collect(cls: type, prefix: str, nested: dict[type, list[str]]) -> None:
    """Record every dataclass nested in ``cls`` with the flag prefix it is given under."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        sub = _dataclass_of(hints.get(f.name, f.type))
        if sub is not None:
            flags = nested.setdefault(sub, [])
            if f"--{prefix}{f.name}.FIELD" not in flags:
                flags.append(f"--{prefix}{f.name}.FIELD")
            _collect(sub, f"{prefix}{f.name}.", nested)


def _first_line(cls: type) -> str:
    doc = cls.__doc__ or ""
    if doc.startswith(f"{cls.__name__}("):  # the dataclass-generated signature, not a docstring
        return ""
    return " ".join(doc.split()).replace("``", "`")


def render() -> str:
    """The whole reference, as Markdown."""
    out: list[str] = []
    nested: dict[type, list[str]] = {}
    commands = _registry()
    out += ["| command | what it does |", "|---|---|"]
    out += [f"| [`{name}`](#mode-policy-{name}) | {_cell(cmd.help)} |" for name, cmd in commands.items()]
    out.append("")
    for name, cmd in commands.items():
        positional = " ".join(p.upper() for p in cmd.positional)
        usage = f"mode-policy {name} {positional} [--FLAG=VALUE ...]".replace("  ", " ")
        about = _first_line(cmd.options) or _cell(cmd.help[:1].upper() + cmd.help[1:]) + "."
        out += [f"## mode-policy {name} {{#mode-policy-{name}}}", "", about, ""]
        out += ["```", usage, "```", ""]
        if cmd.positional:
            listed = ", ".join(f"`{p.upper()}` = `--{p}`" for p in cmd.positional)
            out += [f"Positional arguments: {listed}.", ""]
        if cmd.aliases:
            listed = ", ".join(f"`--{short}` = `--{long}`" for short, long in cmd.aliases.items())
            out += [f"Short flags: {listed}.", ""]
        out += _table(cmd.options, cmd.defaults or {})
        _collect(cmd.options, "", nested)
        for key, value in (cmd.defaults or {}).items():
            if isinstance(value, dict) and value:
                listed = ", ".join(f"`--{key}.{k}={v!r}`" for k, v in value.items())
                out += ["", f"Defaults of this command under `--{key}.*`: {listed}."]
        out.append("")
    for cls, prefixes in nested.items():
        flags = ", ".join(f"`{flag}`" for flag in prefixes)
        out += [f"## {cls.__name__} {{#{_anchor(cls)}}}", ""]
        if _first_line(cls):
            out += [_first_line(cls), ""]
        if flags:
            out += [f"On the command line: {flags}.", ""]
        out += _table(cls, {}, prefix=None)
        out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render())
