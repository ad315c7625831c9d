"""The record of commits that passed the performance gate, per machine and build.

``perf/gate-passes.txt`` holds one line per pass::

    3354490b/gil 0c07cce1e1f8a2b7...(40 hex) 2026-12-06T08:30:00Z 3.11.7

the key (machine id as perf/record.py computes it, then ``gil`` or ``ft`` for the build the
gate ran on), the full commit, when (UTC) and the Python version. Lines are only ever added,
so two branches that each add one merge without a conflict (``.gitattributes`` merges the
file with git's ``union`` driver). The gate compares the working tree with the nearest
ancestor of HEAD recorded for its key: a slowdown just under a threshold in one commit and
another in the next are then measured together, against the last commit that passed.

Each pass also goes to the machine's own copy (``MACHINE_RECORD``, outside the checkout,
beside ci/ft-python.sh's cached interpreter), which the gate reads too: a fresh clone on the
same machine (CI's) finds the passes of the checkout it was cloned from before they are
committed, and the passes a CI run records stay for the next run.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import os
import platform
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from common import ROOT

#: Where the gate keeps its record (committed with the code, like perf/history/).
RECORD = ROOT / "perf" / "gate-passes.txt"


def _machine_record() -> Path | None:
    """``$PERF_GATE_MACHINE_RECORD`` (empty: none), else the machine's cache folder: root's
    /var/cache/celery-asyncio, anyone else's ~/.cache/celery-asyncio (as ci/ft-python.sh)."""
    given = os.environ.get("PERF_GATE_MACHINE_RECORD")
    if given is not None:
        return Path(given) if given else None
    folder = (Path("/var/cache") if os.geteuid() == 0 else Path.home() / ".cache")
    return folder / "celery-asyncio" / "perf-gate-passes.txt"


#: This machine's own copy of the record (see the module docstring); None: not kept.
MACHINE_RECORD = _machine_record()
HEADER = ("# Commits that passed bench/suite/gate.py, one line each: machine/build, commit, "
          "UTC time, Python.\n# Appended by the gate; bench/suite/passes.py and "
          "docs/performance.md explain it.\n")
_LINE = re.compile(r"^(?P<key>[0-9a-f]{8}/(?:gil|ft)) (?P<sha>[0-9a-f]{40}) (?P<when>\S+) "
                   r"(?P<python>\S+)$")


@dataclass(frozen=True)
class Pass:
    """One line of the record."""

    key: str  #: machine id and build: ``3354490b/gil``
    sha: str  #: the commit that passed (40 hex digits)
    when: str  #: UTC, ISO 8601
    python: str  #: the interpreter's version

    def line(self) -> str:
        return f"{self.key} {self.sha} {self.when} {self.python}\n"


def machine_key(free_threaded: bool) -> str:
    """This machine's key: perf/record.py's machine id, then the build (``gil``/``ft``)."""
    spec = importlib.util.spec_from_file_location("perf_record", ROOT / "perf" / "record.py")
    assert spec is not None and spec.loader is not None
    record = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(record)
    return f"{record.machine_id()}/{'ft' if free_threaded else 'gil'}"


def read(path: Path = RECORD) -> list[Pass]:
    """Every pass in ``path`` (none when it does not exist), in file order.

    Raises:
        ValueError: a line that is neither a comment nor a pass (the message names it).
    """
    if not path.exists():
        return []
    passes = []
    for number, text in enumerate(path.read_text().splitlines(), 1):
        if not text.strip() or text.startswith("#"):
            continue
        match = _LINE.match(text.strip())
        if match is None:
            raise ValueError(f"{path}:{number}: not a gate pass line "
                             f"('<machine>/<gil|ft> <40-hex commit> <UTC time> <python>'): "
                             f"{text!r}")
        passes.append(Pass(**match.groupdict()))
    return passes


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)


def last_pass(repo: Path, passes: Sequence[Pass], key: str) -> str | None:
    """The recorded commit for ``key`` nearest to HEAD among HEAD and its ancestors (fewest
    commits between); None when there is none. A recorded commit that this repository does
    not have (another clone's) or that is not below HEAD (another branch's) does not count."""
    best: tuple[int, str] | None = None
    for sha in {p.sha for p in passes if p.key == key}:
        if _git(repo, "merge-base", "--is-ancestor", sha, "HEAD").returncode != 0:
            continue
        between = _git(repo, "rev-list", "--count", f"{sha}..HEAD")
        if between.returncode == 0 and (best is None or int(between.stdout) < best[0]):
            best = (int(between.stdout), sha)
    return best[1] if best else None


def append(path: Path, key: str, sha: str, now: dt.datetime | None = None) -> Pass:
    """Add a pass of ``sha`` for ``key`` to ``path`` (made, with its header, if missing)."""
    when = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    entry = Pass(key, sha, when, platform.python_version())
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(HEADER)
    with path.open("a") as out:
        out.write(entry.line())
    return entry
