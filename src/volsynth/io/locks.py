"""One writer per output folder: ``generate`` and ``train`` hold ``<folder>/.volsynth.lock`` while they write.

The lock is an ``fcntl.flock`` on that file, so the kernel releases it when the process ends however it ends
(a SIGKILL included): a lock file left behind by a killed run is stale and simply taken over. The file records the
holder's pid and command for the message a second writer gets; the holder removes it when it is done.
"""

from __future__ import annotations

import fcntl
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from volsynth.errors import WriteError

LOCK_FILE = ".volsynth.lock"


def _holder(path: Path) -> str:
    """Who holds the lock, as its file says ('another process' when it says nothing readable)."""
    try:
        text = path.read_text().strip()
    except OSError:
        text = ""
    return text or "another process"


def _acquire(path: Path) -> int:
    """An open, exclusively flocked descriptor of ``path`` (the file as it is on disk now), or WriteError."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WriteError(path.parent, f"another volsynth command is writing into this folder "
                             f"({_holder(path)})", "wait for it to finish, or choose another output folder") from None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file its previous holder removed between our open and our flock
            return fd
        os.close(fd)


@contextmanager
def folder_lock(folder: str | Path, command: str = "volsynth") -> Iterator[Path]:
    """Hold the write lock of ``folder`` (created if missing) for the ``with`` block; yields the lock file.

    A second holder, in this process or another, gets a one-line ``WriteError`` naming the folder and the holder.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / LOCK_FILE
        fd = _acquire(path)
    except OSError as exc:
        raise WriteError(folder, f"cannot lock the output folder ({exc.strerror or exc})") from exc
    try:
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()}: {command} {' '.join(sys.argv[1:])}".strip()[:500].encode())
        except OSError:  # a full disk: the lock holds all the same, only the holder's note is missing
            pass
        yield path
    finally:
        try:
            path.unlink()
        except OSError:
            pass
        os.close(fd)
