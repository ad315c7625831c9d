"""The package's imports point down the layers of STYLE.md, and none goes round in a cycle.

``bin -> worker, beat -> app -> canvas/result -> backends, transport -> messaging -> the base``
(exceptions, states, signals, _state, local, utils). Read from the source with ``ast``:
every import statement counts, inside functions too; those under ``if TYPE_CHECKING:`` are
only allowed to point up for type hints outside the storage code (the app's type in
``result.py``), never from ``backends/``, ``transport/`` or ``messaging/``. Importing the
package root itself (``from celery import __version__``) is not counted: Python runs it before
any of its modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "celery"

#: Module prefix -> layer; a module takes the layer of its longest matching prefix.
LAYERS = {
    "celery": 0,
    "celery.messaging": 1,
    "celery.transport": 2,
    "celery.backends": 2,
    "celery.security": 2,
    "celery.canvas": 3,
    "celery.result": 3,
    "celery.events": 3,
    "celery.app": 4,
    # Fix-ups are applied by the app when it is made; Django's task class is the app's.
    "celery.fixups": 4,
    "celery.contrib.django": 4,
    "celery.worker": 5,
    "celery.contrib": 5,
    "celery.beat": 5,
    "celery.bin": 6,
    "celery.__main__": 7,
}
#: The package itself (lazy re-exports of everything) sits on top; importing it from below
#: is not a dependency (Python runs it before any of its modules), so it is never counted.
TOP = {"celery": 7}
#: Upward imports that are known and explained.
ALLOWED = {
    # The remote-control codec is built on kombu's envelope, which the transports own.
    ("celery.messaging.pidbox", "celery.transport.envelope"),
    # Celery's ``app.Worker`` hands out the worker class bound to the app (imported inside
    # the property, when asked for: the app never needs the worker otherwise).
    ("celery.app.base", "celery.worker.worker"),
}


def _modules() -> dict[str, Path]:
    mods = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _layer(module: str) -> int:
    if module in TOP:
        return TOP[module]
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def _imports(module: str, path: Path, mods: dict[str, Path]) -> list[tuple[str, bool]]:
    """``(imported module, under TYPE_CHECKING)`` for every import statement."""
    tree = ast.parse(path.read_text())
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only |= {id(n) for n in ast.walk(node)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods]
            names = subs if len(subs) == len(node.names) else [base, *subs]
        else:
            continue
        for name in names:
            while name and name not in mods:
                name = name.rpartition(".")[0]
            if name and name not in (module, "celery"):
                found.append((name, id(node) in typing_only))
    return found


def _graph() -> dict[str, list[tuple[str, bool]]]:
    mods = _modules()
    return {m: _imports(m, p, mods) for m, p in mods.items()}


def test_imports_point_down_the_layers():
    upward = []
    for module, imports in _graph().items():
        storage = 1 <= _layer(module) <= 2
        for target, typing_only in imports:
            if _layer(target) <= _layer(module) or (module, target) in ALLOWED:
                continue
            if typing_only and not storage:
                continue
            upward.append(f"{module} -> {target}{' (TYPE_CHECKING)' if typing_only else ''}")
    assert upward == []


def test_no_import_cycles():
    graph = {m: sorted({t for t, typing_only in imports if not typing_only})
             for m, imports in _graph().items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in graph:
        if module not in index:
            visit(module)
    # Sibling modules of one package may lean on each other at call time (the Redis
    # backend and its sync/pub-sub helpers; the filesystem transport and its mailbox):
    # what must never happen is a cycle across packages.
    across = [c for c in cycles if len({m.rpartition(".")[0] for m in c}) > 1]
    assert across == []
