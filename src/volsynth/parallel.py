"""Run a function over items, in worker processes when asked, with a rich progress bar (ETA)."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
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


def _exit_with_parent(parent: int, every_s: float) -> None:
    """In a worker process: end it (exit code 1) once its parent is gone, checked every ``every_s`` seconds."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def process_pool(workers: int, spawn: bool = False, every_s: float = 2.0) -> ProcessPoolExecutor:
    """Worker processes that end when this process does, even when it is killed (no orphan carries on with a
    unit that a rerun starts again); ``spawn``: fresh interpreters (a forked child of a process that ran torch
    can hang)."""
    context = multiprocessing.get_context("spawn") if spawn else None
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_exit_with_parent,
                               initargs=(os.getpid(), every_s))


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
        with process_pool(min(workers, len(items))) as pool:
            for result in pool.map(fn, items):
                bar.advance(task)
                yield result
