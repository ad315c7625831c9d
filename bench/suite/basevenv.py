"""The perf gate's base tree: a commit unpacked with ``git archive`` and ``pip install``ed
(not editable) into a throwaway venv kept under ``.cache/`` for the next run with the same
dependency pins (bench/suite/gate.py; docs/performance.md, "The regression gate")."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sysconfig
import tarfile
import tempfile
from pathlib import Path

from common import ROOT

#: The free-threaded pass (ci/perf-gate.sh runs the gate with .venv-ft's python too) keeps
#: its base venv and files apart: they are for another interpreter.
FREE_THREADED = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
CACHE = ROOT / ".cache" / ("perf-gate-ft" if FREE_THREADED else "perf-gate")


def _pins(python: Path) -> str:
    """The working tree's installed versions, as pip constraints, so both trees run on the
    same valkey, hiredis, msgpack and uvloop."""
    out = subprocess.run([str(python), "-m", "pip", "freeze", "--exclude-editable"],
                         capture_output=True, text=True, check=True).stdout
    return "".join(line + "\n" for line in out.splitlines()
                   if line and not line.startswith(("-e ", "celery-asyncio")))


def _extract(repo: Path, sha: str, into: Path) -> None:
    archive = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", sha],
                             capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, filter="data")
        else:  # pragma: no cover - Python before 3.11.4
            tar.extractall(into)


def build_base(repo: Path, sha: str, python: Path, cache: Path = CACHE) -> Path:
    """A venv with ``sha``'s package installed (not editable); its Python.

    The venv is kept: the next run with the same pins only reinstalls the package (or
    nothing, for the same commit). The source is unpacked into a temporary folder under
    ``cache`` and removed at once.

    Raises:
        subprocess.CalledProcessError, subprocess.TimeoutExpired: git or pip failed.
    """
    venv = cache / "venv"
    vpython, stamp = venv / "bin" / "python", venv / "perf-gate.json"
    pins = _pins(python)
    want = {"commit": sha, "pins": hashlib.sha256(pins.encode()).hexdigest()}
    have = json.loads(stamp.read_text()) if stamp.exists() else {}
    if have == want and vpython.exists():
        return vpython
    cache.mkdir(parents=True, exist_ok=True)
    fresh = have.get("pins") != want["pins"] or not vpython.exists()
    # An interpreter built without ensurepip (ci/ft-python.sh's) makes a venv without pip;
    # this venv's pip then installs into it (pip's --python).
    pip_of = [str(vpython), "-m", "pip"]
    if fresh:
        shutil.rmtree(venv, ignore_errors=True)
        if subprocess.run([str(python), "-m", "venv", str(venv)], timeout=120,
                          capture_output=True).returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([str(python), "-m", "venv", "--without-pip", str(venv)], check=True,
                           timeout=120)
    if not (venv / "bin" / "pip").exists():
        pip_of = [str(python), "-m", "pip", "--python", str(vpython)]
    src = Path(tempfile.mkdtemp(prefix="src-", dir=cache))
    try:
        _extract(repo, sha, src)
        (src / "perf-gate-pins.txt").write_text(pins)
        pip = [*pip_of, "install", "-q", "--disable-pip-version-check"]
        if fresh:
            pip += ["-c", str(src / "perf-gate-pins.txt"), f"{src}[redis,uvloop,msgpack]"]
        else:
            pip += ["--no-deps", "--force-reinstall", str(src)]
        stamp.unlink(missing_ok=True)
        subprocess.run(pip, check=True, timeout=600)
    finally:
        shutil.rmtree(src, ignore_errors=True)
    stamp.write_text(json.dumps(want))
    return vpython
