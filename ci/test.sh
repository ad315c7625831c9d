#!/usr/bin/env bash
# Set everything up (ci/setup.sh), then run the whole test suite. Extra arguments go to
# pytest (e.g. `bash ci/test.sh tests/unit -x`).
set -euo pipefail
cd "$(dirname "$0")/.."

bash ci/setup.sh

.venv/bin/ruff check src tests bench examples perf
.venv/bin/mypy

status=0
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=30 tests "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "ci/test.sh: pytest collected no tests (exit 5); that is a failure" >&2
    exit 1
fi
# The free-threaded pass: the whole suite again on a free-threaded CPython (ci/ft-test.sh
# builds it once per machine). FT_SKIP=1 skips it, saying so.
if [ "$status" -eq 0 ]; then
    if [ "${FT_SKIP:-0}" = 1 ]; then
        echo "ci/test.sh: FT_SKIP=1: the free-threaded pass is skipped" >&2
    else
        bash ci/ft-test.sh "$@" || status=$?
    fi
fi
# The performance gate, after a whole passing run only (a run of some tests, with pytest
# options, is a developer's loop; PERF_GATE_SKIP=1 skips it too).
if [ "$status" -eq 0 ] && [ "$#" -eq 0 ]; then
    bash ci/perf-gate.sh || status=$?
fi
exit "$status"
