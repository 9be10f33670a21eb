"""Every repository path and module the README and the documentation name exists.

Checked in ``README.md`` and every ``docs/**/*.md``:

* repository paths, in code spans, in fenced code blocks and as markdown link targets: anything
  starting with ``src/``, ``tests/``, ``scripts/``, ``experiments/``, ``docs/`` or ``plugins/``,
  and ``mode_policy/...`` (which lives under ``src/``); a ``*`` must match at least one file;
* markdown links and images to local files, relative to the page that holds them;
* dotted names under ``mode_policy``: ``::: mode_policy.x.Y`` directives (mkdocstrings),
  ``from mode_policy.x import Y`` in code blocks, and ``mode_policy.x.y`` in code: the module must
  exist, and a name after it must be defined or imported there (a class's methods and fields
  where the class is defined).

Not checked: URLs, and paths a user creates (``runs/...``, ``data/...``, ``outputs/...``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PREFIXES = ("src/", "tests/", "scripts/", "experiments/", "docs/", "plugins/")

_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)((?:[^`\n]|\n(?![ \t]*\n))+?)\1")  # may wrap lines, not paragraphs
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_DIRECTIVE = re.compile(r"^\s*:::\s*([\w.]+)", re.M)
_FROM_IMPORT = re.compile(r"^\s*from\s+(mode_policy(?:\.\w+)*)\s+import\s+(\([^)]*\)|[^\n#]+)", re.M)
_DOTTED = re.compile(r"(?<![\w./-])mode_policy(?:\.\w+)+")
_PLACEHOLDER = re.compile(r"[<>{}$]|\.\.\.|[A-Z]{2,}(?:/|$)")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _split(text: str) -> tuple[str, str]:
    """(prose, code): the lines outside fenced code blocks and the lines inside them."""
    prose, code, fenced = [], [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        (code if fenced else prose).append(line)
    return "\n".join(prose), "\n".join(code)


def _repo_path(token: str) -> str | None:
    """The repository-relative path ``token`` names, or None if it names none."""
    token = token.strip("\"'`,;()[]")
    if token.startswith("-") and "=" in token:  # --config_path=experiments/x.yaml
        token = token.split("=", 1)[1].strip("\"'")
    token = token.split("::", 1)[0].rstrip(".,:;")  # tests/test_x.py::test_y, end of a sentence
    if token.startswith("mode_policy/"):
        token = "src/" + token
    if not token.startswith(PREFIXES) or "://" in token or _PLACEHOLDER.search(token):
        return None
    return token


def references(text: str) -> dict[str, set[str]]:
    """What ``text`` (markdown) names: ``paths`` (repository-relative), ``links`` (local link
    targets, relative to the file) and ``names`` (dotted names under ``mode_policy``)."""
    prose, code = _split(text)
    spans = [m.group(2).strip() for m in _CODE_SPAN.finditer(prose)]
    paths: set[str] = set()
    for chunk in [*spans, code]:
        paths.update(p for p in map(_repo_path, chunk.split()) if p)
    links: set[str] = set()
    for target in _LINK.findall(prose):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # a URL, mailto:, or an anchor on the same page
        target = target.split("#", 1)[0]
        path = _repo_path(target)
        (paths if path and not target.startswith(".") else links).add(path or target)
    names = set(_DIRECTIVE.findall(text))
    for chunk in [*spans, code]:
        names.update(_DOTTED.findall(chunk))
    for module, imported in _FROM_IMPORT.findall(code):
        names.add(module)
        names.update(f"{module}.{n}" for n in re.findall(r"\b\w+\b", imported) if n != "as")
    return {"paths": paths, "links": links, "names": names}


def _module_file(parts: list[str]) -> Path | None:
    base = ROOT / "src" / Path(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _defines(source: str, name: str) -> bool:
    pattern = rf"^\s*(?:async\s+)?(?:class|def)\s+{name}\b|^\s*{name}\s*(?::|=)"
    return re.search(pattern, source, re.M) is not None


def _has_attrs(file: Path, module: list[str], attrs: list[str], depth: int = 0) -> bool:
    """Whether ``attrs[0]`` is defined in ``file`` (the module ``module``), or imported into it from
    a module that defines it; ``attrs[1:]`` must then be defined in the defining file."""
    if not attrs:
        return True
    source = file.read_text(encoding="utf-8")
    name = attrs[0]
    if _defines(source, name):
        return all(_defines(source, attr) for attr in attrs[1:])
    if _module_file([*module, name]) is not None:  # a submodule
        return _has_attrs(_module_file([*module, name]), [*module, name], attrs[1:], depth)
    package = module if file.name == "__init__.py" else module[:-1]
    for dots, origin, imported in re.findall(r"^\s*from\s+(\.*)([\w.]*)\s+import\s+(\([^)]*\)|[^\n#]+)", source, re.M):
        if name not in re.findall(r"\b\w+\b", imported) or depth > 8:
            continue
        base = package[: len(package) - (len(dots) - 1)] if dots else []
        target = [*base, *[p for p in origin.split(".") if p]]
        target_file = _module_file(target)
        if target_file is not None and _has_attrs(target_file, target, attrs, depth + 1):
            return True
    return False


def name_exists(dotted: str) -> bool:
    """Whether ``mode_policy.a.b.Name.attr`` names a module of ``src/`` and, after it, a name
    defined or imported there."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        file = _module_file(parts[:i])
        if file is not None:
            return _has_attrs(file, parts[:i], parts[i:])
    return False


def missing_references(text: str, base: Path) -> list[str]:
    """What ``text`` (a markdown file in folder ``base``) names that does not exist."""
    refs = references(text)
    missing = []
    for path in sorted(refs["paths"]):
        exists = any(ROOT.glob(path)) if "*" in path else (ROOT / path).exists()
        if not exists:
            missing.append(path)
    missing += [link for link in sorted(refs["links"]) if not (base / link).exists()]
    missing += [name for name in sorted(refs["names"]) if not name_exists(name)]
    return missing


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_named_paths_exist(path: Path) -> None:
    missing = missing_references(path.read_text(encoding="utf-8"), path.parent)
    assert not missing, f"{path.relative_to(ROOT)} names what does not exist: {missing}"


def test_checker_catches_missing_paths() -> None:
    text = """
See `src/mode_policy/no_such_module.py`, `scripts/no_such_script.sh --flag` and
[the guide](docs/guides/no_such_page.md), ![a figure](images/no_such.png) and `mode_policy.no_such_module`.

```bash
python experiments/no_such_study.py --out runs/mine     # runs/ is the user's, not checked
```

```python
from mode_policy.policy import NoSuchClass
```

::: mode_policy.policy.MoDEPolicy.no_such_method

Not paths: `runs/quickstart/run/model`, `data/mt10`, https://example.org/src/x.py,
[a site](https://github.com/intuitive-robots/MoDE_Diffusion_Policy), `mode_policy/...`.
"""
    missing = missing_references(text, ROOT / "docs")
    assert missing == [
        "docs/guides/no_such_page.md",
        "experiments/no_such_study.py",
        "scripts/no_such_script.sh",
        "src/mode_policy/no_such_module.py",
        "images/no_such.png",
        "mode_policy.no_such_module",
        "mode_policy.policy.MoDEPolicy.no_such_method",
        "mode_policy.policy.NoSuchClass",
    ]
    # and what exists passes: a module, a class imported into a package, a method, a folder, a glob
    ok = """`mode_policy.serving.PolicyServer`, `mode_policy.policy.MoDEPolicy.from_pretrained`,
`experiments/results/`, `tests/test_docs_paths.py::test_checker_catches_missing_paths`, `src/mode_policy/*.py`,
![figure](images/mt10_expert_usage.png)

::: mode_policy.model.config.MoDEConfig
"""
    assert missing_references(ok, ROOT / "docs") == []
