"""Two writers on one folder: two ``generate`` runs into the same OUT at once, a second ``train`` on a running run
folder. One of them writes, the other stops with one line naming the folder and the holder: no file is clobbered.
The lock (``io/locks.py``) is released however its holder ends, a SIGKILL included."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.hardening.conftest import ROOT, TINY_MODEL, leftovers, one_error_line
from tests.training.helpers import tiny_recipe, write_recipe
from volsynth.cli import main
from volsynth.errors import WriteError
from volsynth.io.locks import LOCK_FILE, folder_lock

ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
BUSY = "another volsynth command is writing into this folder"
HOLD = "import sys, time; from volsynth.io.locks import folder_lock\nwith folder_lock(sys.argv[1], 'holder'):\n" \
       "    print('held', flush=True); time.sleep(120)"


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "volsynth.cli", *args], env=ENV, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _holder(folder: Path) -> subprocess.Popen:
    """Another process holding the lock of ``folder`` (returns once it holds it)."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path):
    with folder_lock(tmp_path, "generate"):
        with pytest.raises(WriteError, match=BUSY) as caught, folder_lock(tmp_path):
            pass
        assert f"pid {os.getpid()}" in caught.value.one_line() and "\n" not in caught.value.one_line()
    assert not (tmp_path / LOCK_FILE).exists()  # released and removed by its holder
    with folder_lock(tmp_path):  # free again
        pass


def test_a_killed_holder_leaves_a_stale_lock_that_is_taken_over(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(WriteError, match=f"pid {holder.pid}: holder"), folder_lock(tmp_path):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / LOCK_FILE).exists()  # left behind by the killed holder ...
    with folder_lock(tmp_path):  # ... and taken over, not a reason to refuse
        pass


def test_generate_into_a_folder_another_run_writes(tmp_path, capsys):
    out = tmp_path / "generated"
    holder = _holder(out)
    try:
        code = main(["generate", str(TINY_MODEL), "--out", str(out), "--prompt", "liver", "--steps", "2",
                     "--no-progress"])
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and BUSY in line and str(out) in line, line
    assert [p.name for p in out.iterdir()] == [LOCK_FILE]  # nothing generated


@pytest.mark.slow
def test_two_generate_runs_at_once_clobber_nothing(tmp_path):
    out = tmp_path / "generated"
    runs = [_cli("generate", str(TINY_MODEL), "--out", str(out), "--prompt", "liver", "--n", "3", "--steps", "2",
                 "--seed", str(seed), "--no-progress") for seed in (0, 100)]
    results = [(run.wait(timeout=180), run.stderr.read()) for run in runs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    line = one_error_line(refused)
    assert BUSY in line or "output exists" in line, line  # at once, or the other had already finished
    sidecars = sorted(out.glob("*.json"))
    assert len(sidecars) == 3 and len(list(out.glob("*_image.nii.gz"))) == 3 and leftovers(out) == []
    seeds = sorted(json.loads(p.read_text())["seed"] for p in sidecars)
    assert seeds in ([0, 1, 2], [100, 101, 102])  # every file from one run: none replaced by the other's


def test_a_second_train_on_a_running_run_folder(prepared_tiny, tmp_path, capsys):
    recipe = write_recipe(tmp_path, tiny_recipe(prepared_tiny.parent / "raw",
                                                autoencoder={"size": "tiny", "train": {"steps": 400}}))
    out = tmp_path / "run"
    first = _cli("train", "--recipe", str(recipe), "--out", str(out), "--no-progress")
    try:
        deadline = time.monotonic() + 120
        while not (out / "recipe.yaml").is_file():  # pinned under the lock: the first run is under way
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read() if first.poll() else ""
            time.sleep(0.2)
        pinned = (out / "recipe.yaml").read_bytes()
        code = main(["train", "--resume", "--out", str(out), "--no-progress"])
        line = one_error_line(capsys.readouterr().err)
        assert code == 2 and BUSY in line and f"pid {first.pid}" in line, line
        assert (out / "recipe.yaml").read_bytes() == pinned
        assert first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
