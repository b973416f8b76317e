"""The dry-run planner against real training, measured in one run.

For the tiny recipe prepared at each ``--sizes`` grid (two phantom cases, its ControlNet left out, ``--steps``
steps of ``--batch`` a stage): the planner's peak RSS and time per step of each stage (measured at ``--probe``
voxels a side and extrapolated linearly in voxels above it, as ``volsynth train --dry-run`` does for a grid too
big to run), and a real ``volsynth train --recipe`` subprocess of the same recipe: its peak RSS (``os.wait4``; the
whole run, data preparation included) and each stage's mean step time after its first step (metrics.jsonl).
Prints both and the ratio planner / real. With ``--repeat R`` both are measured R times, alternately, and the
fastest step time and the smallest peak of each side are kept (on a shared machine other jobs only ever slow a
measurement down).

    .venv/bin/python benchmarks/planner.py [--sizes 64 128] [--steps 3] [--batch 1] [--probe 64] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from volsynth.training import plan_report, planner
from volsynth.training.recipe_schema import load_recipe

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny.yaml"
STAGES = ("autoencoder", "diffusion")
GB = 1024 ** 3


def overrides(size: int, steps: int, batch: int) -> list[str]:
    """The tiny recipe at ``size``^3, two cases, no ControlNet, ``steps`` steps of ``batch`` a stage logged at
    every step."""
    sets = [f"prepare.size={size}", f"data.phantom.size={size}", "data.phantom.cases=2", "controlnet=null"]
    for stage in STAGES:
        sets += [f"{stage}.train.steps={steps}", f"{stage}.train.batch_size={batch}",
                 f"{stage}.train.checkpoint_every={steps}", f"{stage}.train.log_every=1",
                 f"{stage}.train.preview_every=0"]
    return sets


def real_run(sets: list[str], out: Path) -> tuple[int, dict[str, float]]:
    """Train for real in a subprocess: its peak RSS in bytes and each stage's mean step time after the first."""
    command = [sys.executable, "-m", "volsynth.cli", "train", "--recipe", str(RECIPE), "--out", str(out),
               "--no-progress", *[f"--set={s}" for s in sets]]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"training failed: {' '.join(command)}")
    seconds = {}
    for stage in STAGES:
        lines = [json.loads(line) for line in (out / stage / "metrics.jsonl").read_text().splitlines()]
        elapsed = [line["step"] / line["it_per_s"] for line in lines]  # time from the start to each step
        seconds[stage] = (elapsed[-1] - elapsed[0]) / max(1, len(elapsed) - 1)
    return usage.ru_maxrss * 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--probe", type=int, default=64, help="largest grid side the planner runs")
    parser.add_argument("--repeat", type=int, default=1, help="measure both sides this many times, keep the best")
    args = parser.parse_args()
    probes: dict[int, list[planner.Probe]] = {}
    print(f"tiny recipe without ControlNet, 2 phantom cases, {args.steps} steps of batch {args.batch} a stage, "
          f"best of {args.repeat}")
    for size in args.sizes:
        recipe = load_recipe(RECIPE, overrides(size, args.steps, args.batch))
        side = min(size, args.probe)
        plans, reals = [], []
        for attempt in range(args.repeat):
            if len(probes.setdefault(side, [])) <= attempt:
                probes[side].append(planner.probe(recipe, [side] * 3))
            plans.append(plan_report.plan_from_probe(recipe, probes[side][attempt]))
            with tempfile.TemporaryDirectory(prefix="volsynth-bench-") as folder:
                reals.append(real_run(overrides(size, args.steps, args.batch), Path(folder) / "run"))
        planned_peak = min(max(row.peak_rss for row in plan.stages) for plan in plans)
        real_peak = min(peak for peak, _ in reals)
        print(f"{size}^3 ({plans[0].stages[0].source}):")
        print(f"  peak RSS   planner {planned_peak / GB:.2f} GB (largest stage step)   real {real_peak / GB:.2f} GB "
              f"(whole run)   ratio {planned_peak / real_peak:.2f}")
        for index, row in enumerate(plans[0].stages):
            planned = min(plan.stages[index].step_seconds for plan in plans)
            real = min(seconds[row.name] for _, seconds in reals)
            print(f"  {row.name:<12} planner {planned:.2f} s/step   real {real:.2f} s/step   "
                  f"ratio {planned / real:.2f}   ({row.precision})")


if __name__ == "__main__":
    main()
