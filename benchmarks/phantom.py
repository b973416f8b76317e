"""Phantom generation speed: volumes per second per kind at 64^3 and 128^3, in one process.

Targets (issue): >= 5 volumes/s at 64^3 and >= 1 volume/s at 128^3 on 2 cores. Generation only
(anatomy, rendering, facts, report); writing NIfTI is measured separately with ``--write``.

    .venv/bin/python benchmarks/phantom.py [--cases-64 10] [--cases-128 3] [--write]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from volsynth.data.phantom import PHANTOM_KINDS, generate_case, write_phantom_dataset

TARGETS = {64: 5.0, 128: 1.0}  # volumes per second


def rate(kind: str, size: int, cases: int) -> float:
    """Volumes per second of ``generate_case`` after one warm-up case."""
    generate_case(kind, 10_000, size=size)
    start = time.perf_counter()
    for seed in range(cases):
        generate_case(kind, seed, size=size)
    return cases / (time.perf_counter() - start)


def write_rate(kind: str, size: int, cases: int) -> float:
    """Volumes per second of ``write_phantom_dataset`` (generation + gzip NIfTI + reports), one worker."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_phantom_dataset(kind, Path(tmp) / "ds", cases=cases, size=size, progress=False)
        return cases / (time.perf_counter() - start)


def main() -> None:
    """Print a table of rates and their ratio to the target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases-64", type=int, default=10)
    parser.add_argument("--cases-128", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="also time writing a dataset")
    args = parser.parse_args()
    cases = {64: args.cases_64, 128: args.cases_128}
    header = f"{'kind':<12}{'size':>6}{'vol/s':>9}{'target':>8}{'ratio':>8}"
    print(header + (f"{'write vol/s':>13}" if args.write else ""))
    for kind in PHANTOM_KINDS:
        for size in (64, 128):
            value = rate(kind, size, cases[size])
            line = f"{kind:<12}{size:>6}{value:>9.2f}{TARGETS[size]:>8.1f}{value / TARGETS[size]:>8.2f}"
            if args.write:
                line += f"{write_rate(kind, size, cases[size]):>13.2f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()
