"""Run a function over items, in worker processes when asked, with a rich progress bar (ETA)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """Worker processes to use by default: the CPUs this process may run on, at most 8."""
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except AttributeError:  # not on Linux
        return max(1, min(8, os.cpu_count() or 1))


def progress_bar(enabled: bool = True) -> Progress:
    """The progress bar used across volsynth: description, bar, n/total, elapsed, ETA."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


def map_progress(fn: Callable[[T], R], items: Iterable[T], workers: int = 1, description: str = "",
                 progress: bool = True) -> Iterator[R]:
    """Yield ``fn(item)`` for every item, in input order; ``workers > 1`` uses processes."""
    items = list(items)
    with progress_bar(progress) as bar:
        task = bar.add_task(description, total=len(items))
        if workers <= 1 or len(items) <= 1:
            for item in items:
                result = fn(item)
                bar.advance(task)
                yield result
            return
        with ProcessPoolExecutor(max_workers=min(workers, len(items))) as pool:
            for result in pool.map(fn, items):
                bar.advance(task)
                yield result
