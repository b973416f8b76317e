"""The benchmark scripts that no test runs in full: their syntax and their argument checks."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU_CHECK = ROOT / "benchmarks" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def test_gpu_check_is_valid_bash():
    done = subprocess.run(["bash", "-n", str(GPU_CHECK)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_gpu_check_refuses_an_unknown_device_before_running_anything():
    done = subprocess.run(["bash", str(GPU_CHECK), "--device", "tpu"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and "--device must be cpu or cuda" in done.stderr and "==" not in done.stdout
