"""Atomic file writing: nothing a user saved is ever half-written."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, fsync it,
    then rename it over ``path``. A crash leaves the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike, data: Any, sort_keys: bool = True) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=sort_keys) + "\n")


def check_writable(path: str | os.PathLike) -> None:
    """Fail before a long job, not after it, when ``path`` (a file or folder to create) cannot be written."""
    from .errors import ConfigError

    path = Path(path)
    folder = path.parent
    while not folder.exists():
        folder = folder.parent
    if path.exists() and not path.is_dir() and not os.access(path, os.W_OK):
        raise ConfigError(f"cannot write {path}: it is read-only")
    if not folder.is_dir():
        raise ConfigError(f"cannot write {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"cannot write {path}: {folder} is not writable")


@contextlib.contextmanager
def replacing(path: str | os.PathLike, overwrite: bool) -> Iterator[Path]:
    """Build a new ``path`` (a folder) in the ``with`` block without losing the old one first.

    An existing, non-empty ``path`` is refused unless ``overwrite``; then it is renamed aside
    (``.NAME.old``), and removed only once the block has succeeded. If the block fails, the
    partial new output is removed and the old folder is put back; if the process is killed,
    the old folder survives as ``.NAME.old`` beside it (and is restored by the next call)."""
    from .errors import ConfigError

    path = Path(path)
    aside = path.with_name(f".{path.name}.old")
    if aside.exists() and not path.exists():  # a killed earlier replacement: bring the old output back
        os.replace(aside, path)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        if not overwrite:
            raise ConfigError(f"{path} exists and is not empty (pass --overwrite to replace it)")
        if aside.exists():
            shutil.rmtree(aside)
        os.replace(path, aside)
    try:
        yield path
    except BaseException:
        if aside.exists():
            shutil.rmtree(path, ignore_errors=True)
            os.replace(aside, path)
        raise
    if aside.exists():
        shutil.rmtree(aside) if aside.is_dir() else aside.unlink()
