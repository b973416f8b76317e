"""Atomic outputs: write to a temporary sibling, fsync, then rename, so a failure never leaves
a half-written file or folder and never destroys what was already there."""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from volsynth.errors import VolsynthError, WriteError


def _fsync_path(path: Path) -> None:
    """Flush a file (or every file under a folder) and its folder entry to disk."""
    if path.is_dir():
        for child in path.rglob("*"):
            if child.is_file():
                _fsync_file(child)
    else:
        _fsync_file(path)
    _fsync_dir(path.parent)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_sibling(path: Path) -> Path:
    """A hidden name beside ``path`` that keeps its suffixes (format detection relies on them)."""
    return path.with_name(f".partial-{os.getpid()}-{path.name}")


@contextmanager
def atomic_output(path: str | Path, overwrite: bool = True,
                  replaceable: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary path to write to; on success move it onto ``path`` atomically.

    A folder target (a DICOM series, a checkpoint, a prepared dataset) replaces an existing non-empty folder only
    with ``overwrite`` and only when ``replaceable(folder)`` says the folder is one volsynth wrote (a checkpoint's
    meta.json, a series of volsynth's slice files): a folder of anything else is never deleted. On failure the
    temporary output is removed and ``path`` is untouched.
    """
    path = Path(path)
    if not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    check_output(path, overwrite, replaceable)
    tmp = temporary_sibling(path)
    _remove(tmp)
    remove_stale_temporaries(path)
    try:
        yield tmp
        if not tmp.exists():
            raise WriteError(path, "nothing was written")
        _fsync_path(tmp)
        if path.is_dir():
            old = path.with_name(f".old-{os.getpid()}-{path.name}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        # A full disk shows as OSError from Python, but as RuntimeError from torch and ITK and as other types from
        # other writers: judged by the free space left (before the partial output is removed and frees it).
        full = isinstance(exc, Exception) and (not isinstance(exc, VolsynthError) or isinstance(exc, WriteError)) \
            and disk_full(exc, path.parent)
        _remove(tmp)
        if full:
            raise WriteError(path, "cannot write: no space left on device",
                             "free disk space or choose another output folder, then run the command again") from exc
        if isinstance(exc, OSError):
            raise WriteError(path, f"cannot write ({exc.strerror or exc})") from exc
        raise


LOW_SPACE = 1 << 20  # bytes: a write that fails with less than this free failed for want of space


def check_output(path: str | Path, overwrite: bool = True, replaceable: Callable[[Path], bool] | None = None) -> None:
    """WriteError when ``atomic_output`` would refuse ``path`` (a command checks it before its work); writes
    nothing."""
    path = Path(path)
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise WriteError(path, "output folder exists and is not empty", "choose a new path")
        if replaceable is None or not replaceable(path):
            raise WriteError(path, "output folder exists, is not empty and is not one this command wrote: "
                             "it is left as it is", "choose a new path")
    if path.exists() and not overwrite and path.is_file():
        raise WriteError(path, "output file exists", "choose a new path or allow overwriting")


def disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether a failed write failed because the file system of ``folder`` is full."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if "no space left" in str(exc).lower():
        return True
    try:
        stats = os.statvfs(folder)
    except OSError:
        return False
    return stats.f_bavail * stats.f_frsize < LOW_SPACE


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporaries of ``path`` that a killed process left (``.partial-<pid>-<name>`` of a pid that is no
    longer running); returns them. A live process's temporary is left alone."""
    pattern = re.compile(rf"\.partial-(\d+)-{re.escape(path.name)}")
    removed = []
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return removed
    for sibling in siblings:
        match = pattern.fullmatch(sibling.name)
        if match and int(match.group(1)) != os.getpid() and not _running(int(match.group(1))):
            _remove(sibling)
            removed.append(sibling)
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()
