"""`cluster/local.sh stop` ends only the processes of its own two nodes: those naming its temp
dir and their children, never another Ray on the machine (as a bare `ray stop` would)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

SCRIPT = Path(__file__).resolve().parents[2] / "cluster" / "local.sh"
# Stands in for a Ray daemon: names its temp dir on the command line and has a child (a task
# worker) that does not.
DAEMON = "import subprocess, time; subprocess.Popen(['sleep', '300']); time.sleep(300)"


def _daemon(temp_dir: Path) -> psutil.Process:
    proc = subprocess.Popen([sys.executable, "-c", DAEMON, f"--temp-dir={temp_dir}"])
    process = psutil.Process(proc.pid)
    deadline = time.monotonic() + 10
    while not process.children() and time.monotonic() < deadline:
        time.sleep(0.05)
    return process


def test_stop_ends_its_own_nodes_and_their_children_only(tmp_path):
    own, other = tmp_path / "own.ray", tmp_path / "other"
    own.mkdir()
    other.mkdir()
    mine, theirs = _daemon(own), _daemon(other)
    my_worker, their_worker = mine.children()[0], theirs.children()[0]
    try:
        done = subprocess.run(
            ["bash", str(SCRIPT), "stop"],
            env={**os.environ, "RAY_LOCAL_DIR": str(own)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert f"stopped the Ray nodes of {own}" in done.stdout
        _, alive = psutil.wait_procs([mine, my_worker], timeout=5)
        assert alive == [], "its daemon and the daemon's worker are gone"
        assert theirs.is_running() and their_worker.is_running(), "another cluster survives"
        again = subprocess.run(
            ["bash", str(SCRIPT), "stop"],
            env={**os.environ, "RAY_LOCAL_DIR": str(own)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert "no Ray nodes of" in again.stdout
    finally:
        for process in (their_worker, theirs, my_worker, mine):
            if process.is_running():
                process.kill()
