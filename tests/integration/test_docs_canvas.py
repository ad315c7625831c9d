"""docs/canvas.md runs as written: its first Python block is ``proj.py``, a worker runs it
(SQLite broker and results, as in the page), and the other blocks run in order in one
program next to it; their ``assert`` lines are the page's claims."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

from tests.conftest import stop_process

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "canvas.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_canvas_page_runs_as_written(tmp_path: Path) -> None:
    blocks = python_blocks(PAGE.read_text())
    assert blocks[0].startswith("# proj.py") and len(blocks) > 10
    (tmp_path / "proj.py").write_text(blocks[0])
    (tmp_path / "examples.py").write_text("\n\n".join(blocks[1:]))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    env.pop("CELERY_BROKER_URL", None)
    env.pop("CELERY_RESULT_BACKEND", None)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "proj", "worker", "-l", "info"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in worker.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if " ready" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        assert ready.wait(30), "".join(lines)
        run = subprocess.run([sys.executable, "examples.py"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr + "".join(lines)
    finally:
        stop_process(worker)
    output = "".join(lines)
    # What the page says the worker prints: the errback and the handler ran there.
    assert re.search(r"task [0-9a-f-]+ raised ValueError\('something went wrong'\)", output)
    assert re.search(r"[0-9a-f-]+ returned 5", output)
