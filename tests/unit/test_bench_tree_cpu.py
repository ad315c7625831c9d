"""bench/peers/harness.py (and so bench/compare.py's driver): a worker's CPU counts its children."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "peers"))
import harness  # noqa: E402  (standard library only)

# The parent stays idle; its child burns 0.15 s of CPU, says so through the parent, then waits.
CHILD = (
    "import sys, time\n"
    "end = time.process_time() + 0.15\n"
    "while time.process_time() < end: pass\n"
    "print('burnt', flush=True); sys.stdin.read()\n"
)
PARENT = (
    "import subprocess, sys\n"
    f"child = subprocess.Popen([sys.executable, '-c', {CHILD!r}], stdout=subprocess.PIPE,"
    " stdin=subprocess.PIPE, text=True)\n"
    "print(child.stdout.readline(), end='', flush=True); sys.stdin.read(); child.kill()\n"
)


def test_tree_cpu_counts_the_child_processes_cpu_not_only_the_parents():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline() == "burnt\n"  # blocks until the child has burnt its CPU
        own = harness._stat(parent.pid)
        own_cpu = (int(own[harness.UTIME]) + int(own[harness.STIME])) / harness.CLOCK_TICKS
        tree = harness.process_tree(parent.pid)
        assert len(tree) == 2
        assert harness.tree_cpu_seconds(parent.pid) >= own_cpu + 0.12
    finally:
        parent.kill()
        parent.wait(10)
