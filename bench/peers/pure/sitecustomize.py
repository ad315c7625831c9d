"""Run ours without its C speed-ups: bench/peers.py's ``ours-pure`` row puts this directory on
PYTHONPATH, for the producer and the worker alike.

``None`` in ``sys.modules`` makes ``import libvalkey`` (and hiredis, uvloop) raise ImportError,
so valkey-py parses replies in Python and our portal and workers use asyncio's own loop: what
a peer gets without hiredis/uvloop, to compare like with like in both directions.
"""

import sys

for _name in ("libvalkey", "hiredis", "uvloop"):
    sys.modules[_name] = None  # type: ignore[assignment]
