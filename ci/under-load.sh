#!/usr/bin/env bash
# The test suite under CPU load: the whole GIL suite RUNS times in a row (default 5), each
# with HOGS busy-looping processes beside it (default 2), stopping at the first failed run.
# Tests that wait on timing instead of on the condition fail here first. One suite at a time
# on a machine: the tests share Redis databases and RabbitMQ vhosts (run nothing beside it).
# Extra arguments go to pytest (e.g. `bash ci/under-load.sh tests/faults`). Each run's output
# is in .cache/under-load/run-K.log; one line per run is printed.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
HOGS=${HOGS:-2}
bash ci/setup.sh
logs=.cache/under-load
mkdir -p "$logs"
hogs=()
stop_hogs() {
    [ "${#hogs[@]}" -eq 0 ] || kill "${hogs[@]}" 2>/dev/null || true
    hogs=()
}
trap stop_hogs EXIT

[ "$#" -gt 0 ] || set -- tests
for run in $(seq 1 "$RUNS"); do
    for _ in $(seq 1 "$HOGS"); do
        .venv/bin/python -c 'while True: pass' &
        hogs+=("$!")
    done
    start=$SECONDS
    status=0
    CI=true .venv/bin/python -m pytest -q -p no:cacheprovider "$@" >"$logs/run-$run.log" 2>&1 ||
        status=$?
    stop_hogs
    echo "under-load: run $run of $RUNS ($HOGS hogs, $(git rev-parse --short HEAD)):" \
        "$(tail -n 1 "$logs/run-$run.log" | tr -d '=') in $((SECONDS - start)) s, exit $status"
    if [ "$status" -ne 0 ]; then
        echo "under-load: run $run failed; its output: $logs/run-$run.log" >&2
        exit "$status"
    fi
done
