#!/usr/bin/env bash
# Performance regression gate: the working tree against the last commit that passed the gate
# on this machine and build (perf/gate-passes.txt; the previous commit when none is recorded),
# both benchmarked in one interleaved run (bench/suite/gate.py; docs/performance.md). Fails
# when the working tree is significantly slower than a benchmark's threshold, and when it
# cannot measure: the base does not build, Redis is down, or (under CI=true) the
# free-threaded venv is missing. A pass of a clean HEAD is added to perf/gate-passes.txt
# (commit it). Arguments go to gate.py (e.g. `bash ci/perf-gate.sh --base v0.1.0`);
# PERF_GATE_BASE=<rev> picks the base too, PERF_GATE_SKIP=1 skips the gate. Runs once on the
# GIL build (.venv), then on the free-threaded one (.venv-ft, made by ci/ft-test.sh). Uses
# Redis database 9; ~2-3 minutes each.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${PERF_GATE_SKIP:-0}" = 1 ]; then
    echo "perf gate: skipped (PERF_GATE_SKIP=1)"
    exit 0
fi
[ -x .venv/bin/python ] || bash ci/setup.sh --venv-only
status=0
echo "perf gate: GIL build ($(.venv/bin/python -c 'import sys; print(sys.version.split()[0])'))"
.venv/bin/python bench/suite/gate.py "$@" || status=$?
# The free-threaded build too, where ci/ft-test.sh made .venv-ft (FT_SKIP=1: not).
if [ "${FT_SKIP:-0}" = 1 ]; then
    echo "perf gate: the free-threaded build is skipped (FT_SKIP=1)"
elif [ -x .venv-ft/bin/python ]; then
    echo "perf gate: free-threaded build ($(.venv-ft/bin/python -c 'import sys; print(sys.version.split()[0])'))"
    .venv-ft/bin/python bench/suite/gate.py "$@" || { s=$?; [ "$status" -ne 0 ] || status=$s; }
elif [ "${CI:-}" = true ]; then
    # CI ran ci/ft-test.sh, which makes .venv-ft: without it the gate would pass unmeasured.
    echo "perf gate: FAILED: no .venv-ft under CI=true (ci/ft-test.sh makes it; FT_SKIP=1 leaves the free-threaded build out on purpose)"
    [ "$status" -ne 0 ] || status=3
else
    echo "perf gate: no .venv-ft (bash ci/ft-test.sh makes it): the free-threaded build is not gated"
fi
exit "$status"
