"""What every reader fuzz case shares: a time bound, the outcome rule and a tally of outcomes."""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
from hypothesis import HealthCheck, settings

from volsynth.errors import VolsynthError
from volsynth.io import Volume, make_affine

READ_SECONDS = 10  # a read that takes longer is a hang
FUZZ = settings(derandomize=True, deadline=None, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


class Hang(Exception):
    """A read ran past READ_SECONDS."""


@contextmanager
def time_bound(seconds: int = READ_SECONDS) -> Iterator[None]:
    """Raise ``Hang`` in the block after ``seconds`` (SIGALRM; the tests run in the main thread)."""
    def expire(signum, frame):
        raise Hang(f"read did not finish in {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def outcome(read: Callable[[], Volume], tally: Counter) -> Volume | None:
    """Run one read: a Volume, or None after a one-line VolsynthError; anything else (a traceback, a hang) fails."""
    try:
        with time_bound():
            volume = read()
    except VolsynthError as exc:
        line = exc.one_line()
        assert line and "\n" not in line and exc.path, line
        tally["error"] += 1
        return None
    tally["read"] += 1
    spacing = volume.spacing
    assert np.all(np.isfinite(volume.affine)) and np.all(spacing > 0), volume.affine
    assert abs(np.linalg.det(volume.affine[:3, :3])) > 0
    return volume


def reference_volume() -> Volume:
    """A small oblique volume with distinct values (6 x 5 x 4 voxels)."""
    a = np.deg2rad(25.0)
    direction = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ np.diag([-1, 1, 1])
    array = np.arange(6 * 5 * 4, dtype=np.float32).reshape(6, 5, 4) - 30.5
    return Volume(array, make_affine((1.5, 2.0, 3.0), (-10.0, 20.0, 5.0), direction), modality="CT")
