"""Worker processes end with the process that started them, even when it is killed (SIGKILL): an orphan would
carry on with a unit that a rerun starts again."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import volsynth

SCRIPT = """
import os, sys, time
from volsynth.parallel import process_pool

def pid(_):
    return os.getpid()

if __name__ == "__main__":
    pool = process_pool(1, spawn=sys.argv[1] == "spawn", every_s=0.1)
    print(pool.submit(pid, 0).result(), flush=True)
    time.sleep(120)
"""


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie waiting for its parent to reap it counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_pool_workers_end_when_their_parent_is_killed(tmp_path, start):
    script = tmp_path / "pool.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(volsynth.__file__).parents[1])}
    parent = subprocess.Popen([sys.executable, str(script), start], stdout=subprocess.PIPE, text=True, env=env)
    worker = int(parent.stdout.readline())
    assert alive(worker)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 30
    while alive(worker) and time.time() < deadline:
        time.sleep(0.1)
    assert not alive(worker), "the worker outlived its killed parent"
