"""The README's Quick start, run as written: its proj.py and client.py code blocks in a
fresh folder, the worker command from its bash block, and the client's output."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from ..conftest import stop_process

ROOT = Path(__file__).resolve().parents[2]


def quick_start() -> tuple[dict[str, str], list[str]]:
    """The Quick start's Python files by name (their ``# name.py`` first line) and its
    worker command."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    files = {}
    for block in re.findall(r"```python\n(.*?)```", section, re.DOTALL):
        first = block.splitlines()[0]
        assert first.startswith("# ") and first.endswith(".py"), first
        files[first[2:]] = block
    commands = re.findall(r"```bash\n(.*?)```", section, re.DOTALL)
    return files, shlex.split(commands[0].strip())


def test_the_quick_start_runs_as_written(tmp_path):
    files, command = quick_start()
    assert set(files) == {"proj.py", "client.py"} and command[:3] == ["celery", "-A", "proj"]
    for name, code in files.items():
        (tmp_path / name).write_text(code)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    env.pop("CELERY_BROKER_URL", None)
    env.pop("CELERY_RESULT_BACKEND", None)
    worker = subprocess.Popen([sys.executable, "-m", "celery", *command[1:]], cwd=tmp_path,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        client = subprocess.run([sys.executable, "client.py"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=60)
    finally:
        output = stop_process(worker)
    assert client.returncode == 0, client.stderr + output
    assert client.stdout.split() == ["5", "42"]
    assert worker.returncode == 0, output
