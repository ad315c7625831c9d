#!/usr/bin/env bash
# The main job: set up the venv, then run a worker with loop and sync workers on the embedded
# SQLite broker and result backend (no server needed), fed by the sample workload in examples/;
# live progress, then a summary. Stops by itself and leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh --venv-only
exec .venv/bin/python examples/workload.py "$@"
