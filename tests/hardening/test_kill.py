"""SIGKILL during ``generate`` and ``prepare``: no half-written file under a final name (images, label maps, DICOM
slices, sidecars, plan, manifest, dataset files), and the same command again (with --overwrite where files of the
killed run are kept) completes and removes the killed run's temporaries."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write_nnunet
from tests.hardening.conftest import ROOT, TINY_MODEL
from volsynth.io import read_array

ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _run(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "volsynth.cli", *args], env=ENV, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill_when(process: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    """SIGKILL ``process`` as soon as ``ready()`` holds (it must hold before the process ends)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, f"finished before the kill point: {process.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".partial-*")] if folder.exists() else []


def _whole(folder: Path) -> int:
    """Check every file and folder under a final name in a generate output; returns how many there are."""
    count = 0
    for path in folder.iterdir():
        if path.name.startswith("."):
            continue
        count += 1
        if path.suffix == ".json":
            record = json.loads(path.read_text())  # a sidecar is valid JSON ...
            assert (folder / record["image"]).exists()  # ... written after its image
        else:
            array, _, _ = read_array(path)  # an image, label map or DICOM series reads whole
            assert array.ndim == 3
    return count


@pytest.mark.slow
def test_sigkill_during_generate(tmp_path):
    """DICOM output: the image of each volume is a folder of slices, the case a single rename must cover."""
    out = tmp_path / "generated"
    args = ["generate", str(TINY_MODEL), "--out", str(out), "--prompt", "liver", "--n", "3", "--steps", "2",
            "--format", "dicom", "--no-progress"]
    # killed while the second volume is being written (a temporary is there, one sidecar already is)
    _kill_when(_run(*args), lambda: len(list(out.glob("*.json"))) >= 1 and _temporaries(out))
    kept = _whole(out)
    assert 0 < kept < 6  # some, not all, files of the run (an image and a sidecar per volume): killed mid-run
    rerun = _run(*args, "--overwrite")
    assert rerun.wait(timeout=180) == 0, rerun.stderr.read()
    assert _whole(out) == 6 and _temporaries(out) == []


def test_sigkill_during_prepare(tmp_path):
    raw = write_nnunet(tmp_path / "raw", cases=6)
    out = tmp_path / "prepared"
    args = ["prepare", str(raw), str(out), "--size", "16", "--no-progress"]

    def writing_cases() -> bool:
        return any(len(list(p.rglob("*.nii.gz"))) >= 2 for p in tmp_path.glob(".partial-*-prepared"))

    _kill_when(_run(*args), writing_cases)
    assert not out.exists()  # nothing under the final name: no plan, manifest or case of a half-prepared set
    assert _temporaries(tmp_path)
    rerun = _run(*args)
    assert rerun.wait(timeout=180) == 0, rerun.stderr.read()
    assert {"plan.json", "manifest.json"} <= {p.name for p in out.iterdir()}
    assert _temporaries(tmp_path) == []  # the killed run's temporary folder is gone
