#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine (run as root, Python 3.11+ installed):
# the .venv with the package and its dev tools, and the Redis, RabbitMQ and PostgreSQL servers the
# tests and the main job use, running on 127.0.0.1; Flower, selenium and Chromium for the
# Flower browser test. Safe to run again: steps already
# done are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'ci/setup.sh: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

SERVICE_WAIT=${SERVICE_WAIT:-60}   # seconds to wait for each server to answer
APT_UPDATED=0

apt_install() {
    command -v apt-get >/dev/null || die "apt-get not found; install $* yourself"
    if [ "$APT_UPDATED" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# Wait until "$@" succeeds, at most SERVICE_WAIT seconds.
wait_for() {
    local what=$1; shift
    local deadline=$((SECONDS + SERVICE_WAIT))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || die "$what did not come up within ${SERVICE_WAIT}s"
        sleep 1
    done
    log "$what is up"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# -- Python -------------------------------------------------------------------------------

find_python() {
    local candidate
    for candidate in ${PYTHON:-} python3 python3.14 python3.13 python3.12 python3.11; do
        if command -v "$candidate" >/dev/null &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

setup_venv() {
    if [ ! -x .venv/bin/python ]; then
        local python
        python=$(find_python) || die "Python 3.11+ not found (set PYTHON=...)"
        log "creating .venv with $python"
        if ! "$python" -m venv .venv 2>/dev/null; then
            # Debian splits venv/ensurepip into python3-venv (or python3.X-venv).
            rm -rf .venv
            local minor
            minor=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
            apt_install python3-venv "python${minor}-venv" || apt_install python3-venv
            "$python" -m venv .venv
        fi
    fi
    local stamp=.venv/.installed-pyproject.sha256
    local want
    want=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] &&
        .venv/bin/python -c 'import celery.bin.celery, pytest' 2>/dev/null; then
        log ".venv is up to date with pyproject.toml"
        return 0
    fi
    # [dev] includes the [metrics] extra (prometheus-client): the metrics tests need it
    log "installing the package and its dev and flower dependencies into .venv"
    .venv/bin/python -m pip install -q -e ".[dev,flower]"
    echo "$want" > "$stamp"
}

# -- Redis --------------------------------------------------------------------------------

redis_up() {
    if command -v redis-cli >/dev/null; then
        redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG
    else
        port_open 6379
    fi
}

setup_redis() {
    if redis_up; then
        log "Redis is already answering on 127.0.0.1:6379"
        return 0
    fi
    if ! command -v redis-server >/dev/null; then
        log "installing redis-server"
        apt_install redis-server
        redis_up && { log "Redis was started by its package"; return 0; }
    fi
    log "starting redis-server"
    # Failure to start shows up as the wait below timing out, with its own message.
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no ||
        log "redis-server exited with status $?"
    wait_for "Redis" redis_up
}

# -- RabbitMQ (the AMQP transport's tests: tests/conftest.py fresh_amqp_vhost) -----------------

setup_rabbitmq() {
    if port_open 5672; then
        log "RabbitMQ is already listening on 127.0.0.1:5672"
        return 0
    fi
    if ! command -v rabbitmq-server >/dev/null; then
        log "installing rabbitmq-server"
        apt_install rabbitmq-server
    fi
    # The package may have started it (or be starting it) already; only start it if not.
    if ! pgrep -x beam.smp >/dev/null 2>&1; then
        log "starting rabbitmq-server"
        rabbitmq-server -detached || log "rabbitmq-server exited with status $?"
    fi
    wait_for "RabbitMQ" port_open 5672
}

# -- PostgreSQL and MariaDB (the SQL result backend's tests: tests/conftest.py postgres_url,
# mariadb_url; trust/no-password logins on 127.0.0.1, as the tests connect) ----------------

setup_postgres() {
    if port_open 5432; then
        log "PostgreSQL is already listening on 127.0.0.1:5432"
        return 0
    fi
    if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
        log "installing postgresql"
        apt_install postgresql
    fi
    local version hba
    version=$(ls /usr/lib/postgresql | sort -V | tail -1)
    if ! pg_lsclusters -h 2>/dev/null | grep -q "^$version main"; then
        pg_createcluster "$version" main || log "pg_createcluster exited with status $?"
    fi
    hba=/etc/postgresql/$version/main/pg_hba.conf
    if [ -f "$hba" ] && ! grep -q "celery-asyncio tests" "$hba"; then
        # First matching line wins: loopback logins without a password, for the tests.
        { printf '# celery-asyncio tests: trust on loopback\n'
          printf 'host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n'
          cat "$hba"; } > "$hba.new" && mv "$hba.new" "$hba"
    fi
    if ! port_open 5432; then
        log "starting PostgreSQL $version"
        pg_ctlcluster "$version" main start || log "pg_ctlcluster exited with status $?"
    fi
    wait_for "PostgreSQL" port_open 5432
}

mariadb_root_over_tcp() {
    mariadb -h 127.0.0.1 -u root -e 'SELECT 1'
}

setup_mariadb() {
    if port_open 3306; then
        log "MariaDB is already listening on 127.0.0.1:3306"
        return 0
    fi
    if ! command -v mariadbd >/dev/null && [ ! -x /usr/sbin/mariadbd ]; then
        log "installing mariadb-server"
        apt_install mariadb-server
    fi
    if ! port_open 3306; then
        log "starting MariaDB"
        (service mariadb start || service mysql start) >/dev/null 2>&1 ||
            (mysqld_safe --bind-address=127.0.0.1 >/dev/null 2>&1 &)
    fi
    wait_for "MariaDB" port_open 3306
    # Debian's root logs in through the unix socket only; the tests come over TCP.
    if ! mariadb_root_over_tcp >/dev/null 2>&1; then
        mariadb -u root -e "ALTER USER root@localhost IDENTIFIED VIA unix_socket OR
            mysql_native_password USING PASSWORD(''); CREATE USER IF NOT EXISTS
            root@'127.0.0.1'; GRANT ALL ON *.* TO root@'127.0.0.1' WITH GRANT OPTION;
            FLUSH PRIVILEGES" || log "could not open root to TCP logins"
    fi
}

# -- django-celery-results (the django-db result backend's tests) ---------------------------

DJANGO_CELERY_RESULTS_VERSION=2.6.0

setup_django_results() {
    # It requires upstream celery, which would replace our package: installed without its
    # dependencies (Django comes from the [django] extra); we use its models and migrations.
    if ! .venv/bin/python -c 'import django_celery_results' 2>/dev/null; then
        log "installing django-celery-results $DJANGO_CELERY_RESULTS_VERSION into .venv with --no-deps"
        .venv/bin/python -m pip install -q --no-deps "django-celery-results==$DJANGO_CELERY_RESULTS_VERSION"
    fi
}

# -- Flower and the browser its test drives (tests/integration/test_flower_browser.py) -----

FLOWER_VERSION=2.2.0

setup_flower() {
    # Flower requires upstream celery, which would replace our package: its own runtime
    # dependencies come from our [flower] extra (setup_venv), Flower itself without deps.
    # pip then reports that flower's "celery" requirement is missing; that is expected.
    if ! .venv/bin/python -c 'import flower' 2>/dev/null; then
        log "installing flower $FLOWER_VERSION into .venv with --no-deps"
        .venv/bin/python -m pip install -q --no-deps "flower==$FLOWER_VERSION"
    fi
    if ! .venv/bin/python -c 'import selenium' 2>/dev/null; then
        log "installing selenium into .venv"
        .venv/bin/python -m pip install -q "selenium>=4.20"
    fi
    if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
        log "installing chromium and chromium-driver"
        apt_install chromium chromium-driver
    fi
}

setup_venv
# `ci/setup.sh --venv-only`: what the main job needs (it runs on the embedded SQLite broker).
if [ "${1:-}" = "--venv-only" ]; then
    exit 0
fi
setup_redis
setup_rabbitmq
setup_postgres
setup_mariadb
setup_django_results
setup_flower
# The AMQP TLS test makes its certificate with the openssl command.
if ! command -v openssl >/dev/null; then
    log "installing openssl"
    apt_install openssl
fi
