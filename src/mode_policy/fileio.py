"""Output safety, atomic file writing (nothing a user saved is ever half-written) and single-writer locks.

Every command that writes follows one set of rules, :class:`Outputs`:

* it never writes over a file it did not create in this run unless the user asks (``--overwrite``),
  and never over its own inputs, even then; a file written beside the named output (a
  description ``.json``) replaces only an earlier one of its kind, never another file;
* a command's own default output in a run or model folder (a run's ``eval_info.json``, a model's
  ``export/``, a run's ``report/``) is that command's to keep up to date: its earlier result is
  replaced, anything else there is refused as above;
* every output path, sidecar included, is checked before the work starts: its folder can be
  written (a probe file is created and removed), it is not a folder (or a file, for a folder
  output), no parent is a file, it is not an input, and the disk has room when its size is known;
* files are written to a temporary file beside them and renamed into place (:func:`atomic_write`),
  folders built beside theirs and swapped in (:func:`replacing`, :func:`moved_aside`); a failure
  while writing (a full disk) is one :class:`~mode_policy.errors.OutputError` naming the file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO}
"""Errors of the disk or its permissions while writing: one line naming the file, not a traceback."""


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, fsync it,
    then rename it over ``path``. A crash leaves the old file intact; a full or read-only
    disk is an :class:`~mode_policy.errors.OutputError` naming ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _write_error(path, err) from None
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno in WRITE_ERRNOS:
            raise _write_error(path, err) from None
        raise
    return path


def _write_error(path: Path, err: OSError) -> Exception:
    from .errors import OutputError

    if err.errno not in WRITE_ERRNOS | {errno.ENOTDIR, errno.EEXIST}:
        return err
    reason = err.strerror or str(err)
    return OutputError(f"cannot write {path}: {reason}{' (nothing was replaced)' if path.exists() else ''}")


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
    """Fail before a long job, not after it, when ``path`` (a file or folder to create) cannot be written
    (ConfigError naming it); :class:`Outputs` checks an output fully."""
    from .errors import ConfigError

    path = Path(path)
    if path.exists() and not path.is_dir() and not os.access(path, os.W_OK):
        raise ConfigError(f"cannot write {path}: it is read-only")
    _writable_folder(path)


def _existing_ancestor(path: Path) -> Path:
    folder = path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _writable_folder(path: Path, itself: bool = False) -> Path:
    """The nearest existing folder above ``path`` (``itself``: from ``path`` itself, a folder to
    write in), which must be a folder and writable: a file is created in it and removed (a
    read-only filesystem or a root-owned folder fails as writing would)."""
    from .errors import ConfigError

    folder = _existing_ancestor(path if itself else path.parent)
    if not folder.is_dir():
        raise ConfigError(f"cannot write {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"cannot write {path}: {folder} is not writable")
    try:
        fd, probe = tempfile.mkstemp(prefix=".mode-policy-probe.", dir=folder)
    except OSError as err:
        raise ConfigError(f"cannot write {path}: {folder} is not writable ({err.strerror or err})") from None
    os.close(fd)
    os.unlink(probe)
    return folder


def free_bytes(folder: str | os.PathLike) -> int:
    """Bytes free to this user on the filesystem of ``folder``."""
    return shutil.disk_usage(folder).free


def _size(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(Path(path).expanduser())).resolve()


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


class Outputs:
    """The files and folders one command run will write, each checked when added, before the work
    starts (the rules are in this module's docstring). ``overwrite``: the user's ``--overwrite``;
    ``inputs``: the files and folders the command reads (no output may replace one, lie inside an
    input folder or hold an input); ``flag``: how the user asks to overwrite (named in messages).

    ::

        outputs = Outputs(opts.overwrite, inputs=RunDir.model_files(model_dir))
        onnx = outputs.file(opts.out, what="the exported sampler", size=weights_bytes)
        outputs.file(onnx.with_suffix(".json"), what="its description", own=is_description, sidecar_of=onnx)
        ...  # minutes of work, then atomic writes
    """

    def __init__(self, overwrite: bool = False, inputs: Iterable[str | os.PathLike] = (), flag: str = "--overwrite"):
        self.overwrite = overwrite
        self.flag = flag
        self.inputs: list[tuple[Path, Path]] = []  # (as given, resolved)
        for path in inputs:
            self.add_input(path)
        self.planned: dict[Path, str] = {}
        self._needed: dict[int, int] = {}  # bytes per filesystem

    def add_input(self, path: str | os.PathLike) -> None:
        """Protect ``path`` (a file or folder the command reads) from every output."""
        self.inputs.append((Path(path), _resolved(path)))

    def _refuse_inputs(self, path: Path, resolved: Path, what: str, holds: bool) -> None:
        from .errors import ConfigError

        for given, source in self.inputs:
            if resolved == source:
                where = "is an input of this command"
            elif _inside(resolved, source):
                where = f"is inside {given}, an input of this command"
            elif holds and resolved in source.parents:
                where = f"holds {given}, an input of this command"
            else:
                continue
            raise ConfigError(f"{path} {where}: {what} cannot be written there (choose another output path)")

    def _plan(self, path: Path, resolved: Path, what: str) -> None:
        from .errors import ConfigError

        if resolved in self.planned:
            raise ConfigError(f"{path} would be both {self.planned[resolved]} and {what} (choose another output path)")
        self.planned[resolved] = what

    def file(
        self,
        path: str | os.PathLike,
        *,
        what: str = "the output",
        size: int | None = None,
        own: Callable[[Path], bool] | None = None,
        default: bool = False,
        sidecar_of: str | os.PathLike | None = None,
    ) -> Path:
        """Check ``path`` as a file this run will write and return it. ``size``: its size in bytes,
        if known (the disk needs room for it). ``own(path)``: whether an existing file there is this
        command's earlier result; ``default``: ``path`` is the command's own default location, where
        its earlier result is replaced without ``--overwrite``. ``sidecar_of``: the file is written
        beside that output, unasked: an existing file is replaced only when ``own`` recognises it."""
        from .errors import ConfigError

        path = Path(path)
        resolved = _resolved(path)
        if path.is_dir():
            raise ConfigError(f"{path} is a folder; {what} is a file (name the file to write)")
        folder = self.location(path, what)
        self._plan(path, resolved, what)
        if path.exists() or path.is_symlink():
            mine = own is not None and path.is_file() and own(path)
            if sidecar_of is not None and not mine:
                raise ConfigError(
                    f"{path} exists and is not {what} from an earlier run: writing {what} of {sidecar_of} "
                    "there would replace it (choose another output path)"
                )
            if not (self.overwrite or (default and mine)):
                raise ConfigError(f"{path} exists (pass {self.flag} to replace it)")
            if not os.access(path, os.W_OK):
                raise ConfigError(f"cannot write {path}: it is read-only")
        if size:
            self._room(path, folder, size)
        return path

    def folder(
        self,
        path: str | os.PathLike,
        *,
        what: str = "the output",
        whole: bool = False,
        names: Iterable[str] = (),
        own: Callable[[Path], bool] | None = None,
        default: bool = False,
    ) -> Path:
        """Check ``path`` as a folder this run will write and return it. ``whole``: the folder is
        replaced as a whole (a dataset), so an existing non-empty one needs ``--overwrite``;
        otherwise the command writes ``names`` in it (files or sub-folders), each refused when it
        exists unless ``--overwrite``. ``default``: ``path`` is the command's own location, and a
        folder there that ``own(path)`` recognises as its earlier output is written without ``--overwrite``."""
        from .errors import ConfigError

        path = Path(path)
        resolved = _resolved(path)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{path} is a file, not a folder ({what} is a folder)")
        self.location(path, what, folder=True, holds=whole)
        for name in names:
            self._refuse_inputs(path / name, _resolved(path / name), what, holds=True)
        self._plan(path, resolved, what)
        if not path.is_dir():
            return path
        mine = own is not None and own(path)
        if default and mine:
            return path
        if whole:
            if any(path.iterdir()) and not self.overwrite:
                raise ConfigError(f"{path} exists and is not empty (pass {self.flag} to replace it)")
            return path
        there = [name for name in names if (path / name).exists()]
        if there and not self.overwrite:
            raise ConfigError(
                f"{path} already holds {', '.join(there)} (pass {self.flag} to replace, or choose another folder)"
            )
        return path

    def location(
        self, path: str | os.PathLike, what: str = "the output", folder: bool = False, holds: bool = False
    ) -> Path:
        """Check only where ``path`` (a file, or a ``folder``) would be written: its nearest existing
        folder can be written, no parent is a file, and it is not an input nor inside one (nor, with
        ``holds``, holds one). Returns that nearest existing folder. For outputs whose contents the
        caller judges itself (a run directory: empty, or resumed)."""
        path = Path(path)
        existing = _writable_folder(path, itself=folder)
        self._refuse_inputs(path, _resolved(path), what, holds=holds)
        return existing

    def _room(self, path: Path, folder: Path, size: int) -> None:
        from .errors import ConfigError

        device = folder.stat().st_dev
        self._needed[device] = self._needed.get(device, 0) + int(size)
        free = free_bytes(folder)
        if free < self._needed[device]:
            raise ConfigError(
                f"cannot write {path}: it needs at least {_size(self._needed[device])} and {folder} has "
                f"{_size(free)} free"
            )


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
