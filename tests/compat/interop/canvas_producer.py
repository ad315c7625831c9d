"""Run by upstream Celery's Python: every canvas scenario, sent to our workers (the default
queue ``to-ours``); prints ``{scenario: outcome}`` as JSON."""

import json
import os
import sys

from canvas_scenarios import SCENARIOS
from canvasapp import make_app

app = make_app(os.environ["INTEROP_URL"], "upstream-client", "to-ours")
out = {}
for name in sys.argv[1:] or SCENARIOS:
    try:
        out[name] = SCENARIOS[name](app, "upstream")
    except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
        out[name] = {"crashed": [type(exc).__name__, repr(exc)]}
json.dump(out, sys.stdout)
