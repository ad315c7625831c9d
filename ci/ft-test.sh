#!/usr/bin/env bash
# The free-threaded pass: the whole test suite again, on a free-threaded CPython built by
# ci/ft-python.sh (cached outside the checkout), in .venv-ft with the package's default
# extras ([redis,amqp,uvloop,msgpack]: their C extensions are built from source by pip where PyPI
# has no free-threaded wheel), and [metrics] (prometheus-client: pure Python, no required
# dependencies; tests/integration/test_metrics.py fails under CI without it), [fastapi] and
# [observability] (the FastAPI example's and the tracing libraries' tests fail under CI
# without them; the tracing libraries run in processes of their own there, so a C extension
# of theirs that turned the GIL on would not reach the rest of the suite). The GIL must
# stay off: PYTHON_GIL is left unset, and the tests in tests/integration/test_free_threading.py
# check it in a running worker.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "ci/ft-test.sh: $*" >&2; }

start=$SECONDS
python=$(bash ci/ft-python.sh)
say "free-threaded CPython ready in $((SECONDS - start))s: $python"

start=$SECONDS
if [ ! -x .venv-ft/bin/pip ]; then
    # The interpreter is built without ensurepip: pip's wheel comes from PyPI, fetched by the
    # system python's pip, and installs itself.
    rm -rf .venv-ft
    "$python" -m venv --without-pip .venv-ft
    wheels=$(mktemp -d)
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$wheels" pip
    whl=$(ls "$wheels"/pip-*.whl)
    .venv-ft/bin/python "$whl/pip" install -q "$whl"
    rm -rf "$wheels"
fi
stamp=.venv-ft/.installed-pyproject.sha256
want=$(cat pyproject.toml ci/ft-test.sh | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] ||
    ! .venv-ft/bin/python -c 'import celery.bin.celery, pytest' 2>/dev/null; then
    say "installing the package with its default extras and the test tools into .venv-ft"
    # psycopg without its [binary] C extension (the Django test's and the SQL result backend's
    # PostgreSQL driver): the pure-Python one loads the system's libpq with ctypes and leaves
    # the GIL off; sqlalchemy and pymysql: the SQL result backend's tests (tests/conftest.py
    # postgres_url, mariadb_url). hypothesis: its newest releases build a Rust part from
    # crates.io for interpreters without a wheel; a release with a pure-Python wheel does for
    # the tests. pydantic-core (FastAPI's, through pydantic) likewise: its newest releases may
    # have no free-threaded wheel yet, and building one needs crates.io; pip then takes the
    # newest pydantic whose pydantic-core has one.
    # amqp: aio-pika for the RabbitMQ transport; kombu (pure Python): the reference the AMQP
    # topology tests compare our declarations with; pyyaml: the yaml serializer's tests and
    # the deploy example's compose file.
    .venv-ft/bin/python -m pip install -q --only-binary=hypothesis,pydantic-core -e ".[redis,amqp,uvloop,msgpack,metrics,fastapi,observability]" \
        "pytest>=8" "pytest-asyncio>=0.24" "pytest-timeout>=2.3" "hypothesis>=6.100" "pyperf>=2.7" \
        "kombu>=5.3" "pyyaml>=6" "django>=4.2" "psycopg>=3.1" "sqlalchemy>=2.0" "pymysql>=1.1"
    # django-celery-results requires upstream celery: without its dependencies (ci/setup.sh).
    .venv-ft/bin/python -m pip install -q --no-deps "django-celery-results==2.6.0"
    echo "$want" > "$stamp"
fi
say ".venv-ft ready in $((SECONDS - start))s"

# The interpreter must be free-threaded and celery must not turn its GIL on.
.venv-ft/bin/python - <<'EOF'
import sys, sysconfig
assert sysconfig.get_config_var("Py_GIL_DISABLED"), "not a free-threaded build"
import celery.transport.redis, celery.backends.redis  # noqa: E401  the Redis client, parsers
import celery.messaging.serialization, celery.utils.portal  # noqa: E401
import celery.backends.sql, psycopg, pymysql  # noqa: E401  SQLAlchemy and the SQL drivers
import celery.transport.amqp, celery.backends.rpc  # noqa: E401  aio-pika, aiormq, yarl, multidict
assert not sys._is_gil_enabled(), "importing celery's Redis or AMQP transport or SQL backend turned the GIL on"
print(f"ci/ft-test.sh: {sys.version.split()[0]} free-threaded, GIL off after importing celery",
      file=sys.stderr)
EOF

# Left out of this pass, on purpose: the Flower tests. They drive Flower (a tornado app)
# and headless Chromium against our worker and CLI; what they exercise of ours (remote
# control, events, the CLI) runs in this pass through its own tests, and .venv-ft gets no
# Flower, tornado or selenium (Flower is installed next to our package by ci/setup.sh for
# the GIL pass only), so under CI=true they would fail here for a missing package, not for
# a threading bug. Skipping them also keeps ~20 s of browser time out of this pass.
#
# And the message-signing tests: they need the cryptography package, which publishes no
# free-threaded wheel (building it here compiles its Rust part, minutes per CI run). Only
# app.setup_security() imports it; what they exercise of ours (the serializer registry,
# the worker's refusals) runs in this pass through the other serializers' tests.
#
# And, to keep .ci/run under its 45 minutes on 2 cores, tests whose subject is the same
# bytes or the same tool on both builds, each several seconds of other processes' time:
# - upstream Celery interop (tests/compat/test_upstream_*.py): upstream's side runs on the
#   system's Python in both passes; ours sends and reads the same wire form, built by code
#   this pass runs through the golden-message tests (tests/compat/test_golden_*.py) and
#   every worker test;
# - the documentation's and examples' own checks (README Quick start, examples/deploy),
#   and the worker command's process habits (pidfile, detach, multi, SIGHUP restart:
#   tests/integration/test_cli_habits.py), main-thread code the same on both builds;
# - the benchmark tools' smoke tests (bench/: scaling sweep, round-trip A/B, canvas and
#   RabbitMQ benches), which check the tools' reports, not the worker;
# - beat's multi-process scenarios (tests/integration/test_beat.py: schedules, restarts and
#   leader leases between beat processes, two minutes of waiting for due runs): its one
#   thread-sensitive part, a stop from a signal handler, is checked here by
#   tests/unit/test_beat_scheduler.py; and Redis's own restart with appendfsync
#   (tests/faults/test_redis_restart.py), the server's durability, not ours;
# - celery capacity's measured sweeps (tests/integration/test_capacity_measured.py, ~55 s of
#   worker processes): they check the model's predictions against the machine, not threads;
#   its fast tests (bad input, clean-up after a failed task, the model) run in this pass.
not_here=(--ignore=tests/integration/test_flower_browser.py
          --ignore=tests/integration/test_flower_install.py
          --ignore=tests/integration/test_signing.py
          --ignore=tests/compat/test_upstream_signing.py
          --ignore=tests/compat/test_upstream_interop.py
          --ignore=tests/compat/test_upstream_canvas_interop.py
          --ignore=tests/compat/test_upstream_amqp_interop.py
          --ignore=tests/compat/test_upstream_amqp_routes.py
          --ignore=tests/compat/test_upstream_sql_interop.py
          --ignore=tests/compat/test_upstream_django_db.py
          --ignore=tests/integration/test_readme_quick_start.py
          --ignore=tests/integration/test_deploy_examples.py
          --ignore=tests/integration/test_cli_habits.py
          --ignore=tests/integration/test_scaling_sweep.py
          --ignore=tests/integration/test_rtt_ab.py
          --ignore=tests/integration/test_canvas_bench.py
          --ignore=tests/integration/test_bench_rabbitmq.py
          --ignore=tests/integration/test_beat.py
          --ignore=tests/faults/test_redis_restart.py
          --ignore=tests/integration/test_capacity_measured.py)

start=$SECONDS
status=0
.venv-ft/bin/python -m pytest -q -p no:cacheprovider --durations=30 "${not_here[@]}" tests "$@" || status=$?
say "the free-threaded pass took $((SECONDS - start))s (pytest exit $status)"
if [ "$status" -eq 5 ]; then
    say "pytest collected no tests (exit 5); that is a failure"
    exit 1
fi
exit "$status"
