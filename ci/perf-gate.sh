#!/usr/bin/env bash
# Performance regression gate: the working tree against the previous commit of main, both
# benchmarked in one interleaved run (bench/suite/gate.py; docs/performance.md). Fails only
# when the working tree is significantly slower than a benchmark's threshold. Arguments go
# to gate.py (e.g. `bash ci/perf-gate.sh --base v0.1.0`); PERF_GATE_BASE=<rev> picks the
# base too, PERF_GATE_SKIP=1 skips the gate. Uses Redis database 9; ~2-3 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${PERF_GATE_SKIP:-0}" = 1 ]; then
    echo "perf gate: skipped (PERF_GATE_SKIP=1)"
    exit 0
fi
[ -x .venv/bin/python ] || bash ci/setup.sh --venv-only
exec .venv/bin/python bench/suite/gate.py "$@"
