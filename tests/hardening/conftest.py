"""Shared helpers of the hardening tests: a tiny real disk that can be filled, and output-folder checks."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY_MODEL = ROOT / "models" / "tiny-abdomen"
FILLER = "filler.bin"


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 3 MiB tmpfs mounted for the test (needs root; skipped with the reason where mounting is not permitted)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs the tests as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here ({result.stderr.strip()})")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill ``disk`` with one file, to the last byte but ``leave``; returns it (remove it to free the space)."""
    filler = disk / FILLER
    with open(filler, "wb", buffering=0) as handle:
        for size in (1 << 16, 1 << 10, 1):
            try:
                while True:
                    handle.write(b"\0" * size)
            except OSError:
                pass
    if leave:
        os.truncate(filler, filler.stat().st_size - leave)
    else:
        assert os.statvfs(disk).f_bavail == 0
    return filler


def leftovers(folder: Path) -> list[str]:
    """Temporary or lock files volsynth left under ``folder`` (a failed or killed write must leave none of them
    under a final name, and none of its own temporaries)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if p.name.startswith((".partial-", ".old-")) or p.name == ".volsynth.lock")


def files_under(folder: Path) -> list[str]:
    """Every file under ``folder`` but the filler, relative."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != FILLER)


def one_error_line(stderr: str) -> str:
    """The one ``error:`` line of a failed command (asserts there is exactly one line and no traceback)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr, stderr
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]
