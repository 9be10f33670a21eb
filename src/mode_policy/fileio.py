"""Atomic file writing (nothing a user saved is ever half-written) and single-writer locks."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


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


def _restore_interrupted(path: Path, aside: Path) -> None:
    """A replacement killed between its two renames left only the old output aside: put it back."""
    if aside.exists() and not path.exists():
        os.replace(aside, path)


def _refuse_unless_overwrite(path: Path, overwrite: bool) -> None:
    from .errors import ConfigError

    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise ConfigError(f"{path} exists and is not empty (pass --overwrite to replace it)")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


@contextlib.contextmanager
def replacing(path: str | os.PathLike, overwrite: bool) -> Iterator[Path]:
    """Build a new folder for ``path`` beside it (``.NAME.new``, yielded) and swap it in when the
    ``with`` block succeeds. The old ``path`` stays untouched until then; a failed or killed build
    leaves it as it was. An existing, non-empty ``path`` is refused unless ``overwrite``.
    For outputs that do not record their own location (datasets)."""
    path = Path(path)
    new, aside = path.with_name(f".{path.name}.new"), path.with_name(f".{path.name}.old")
    _restore_interrupted(path, aside)
    _refuse_unless_overwrite(path, overwrite)
    _remove(new)
    try:
        yield new
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    if path.exists():
        _remove(aside)
        os.replace(path, aside)
    os.replace(new, path)
    _remove(aside)


@contextlib.contextmanager
def moved_aside(path: str | os.PathLike, overwrite: bool) -> Iterator[Path]:
    """Build a new ``path`` in place, keeping the old one renamed aside (``.NAME.old``) until the
    ``with`` block succeeds; on failure the partial output is removed and the old one restored.
    For outputs that record their own location (a quickstart's run names its dataset's path).
    A killed build leaves the old output at ``.NAME.old``; the next call restores it if ``path`` is gone."""
    path = Path(path)
    aside = path.with_name(f".{path.name}.old")
    _restore_interrupted(path, aside)
    _refuse_unless_overwrite(path, overwrite)
    if path.exists():
        _remove(aside)
        os.replace(path, aside)
    try:
        yield path
    except BaseException:
        if aside.exists():
            shutil.rmtree(path, ignore_errors=True)
            os.replace(aside, path)
        raise
    _remove(aside)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a JSON-lines file (empty if missing); a torn last line (a kill mid-write) is skipped."""
    from .errors import DataError

    path = Path(path)
    if not path.is_file():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                continue
            raise DataError(f"{path}, line {i + 1}: not valid JSON ({err})") from None
    return records


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, wait: bool = True, holder: str = "another process") -> Iterator[None]:
    """Hold an exclusive flock on ``path`` for the block; the kernel releases it when the process
    dies, so a kill leaves no stale lock. ``wait=False``: raise ConfigError naming ``holder`` and
    the lock file at once if another process holds it, instead of waiting."""
    from .errors import ConfigError

    with open(path, "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise ConfigError(
                f"{holder} is using {Path(path).parent} (it holds the lock {path}); "
                "wait for it to finish or stop it first"
            ) from None
        yield
