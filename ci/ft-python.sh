#!/usr/bin/env bash
# Build a free-threaded CPython (--disable-gil) from Debian's source package, once per machine,
# and print the path of its python. Tries 3.14 first and falls back to 3.13.
#
# The source comes from a deb-src entry for Debian testing in a private apt configuration
# under the cache folder (the system's apt sources are not touched); build dependencies come
# from the system's apt. The result lives in $FT_PYTHON_CACHE (default
# /var/cache/celery-asyncio/ft-python as root, else ~/.cache/celery-asyncio/ft-python:
# outside the checkout), where later runs on the same machine find it. All messages go to stderr; stdout is the path only.
set -euo pipefail
cd "$(dirname "$0")/.."
# As root, a folder that every user can read (a test runs the interpreter as nobody).
if [ "$(id -u)" -eq 0 ]; then default=/var/cache/celery-asyncio/ft-python
else default="${XDG_CACHE_HOME:-$HOME/.cache}/celery-asyncio/ft-python"; fi
cache="${FT_PYTHON_CACHE:-$default}"
mkdir -p "$cache"
chmod 755 "$cache"
cache="$(cd "$cache" && pwd)"
say() { echo "ci/ft-python.sh: $*" >&2; }

for v in 3.14 3.13; do
    if [ -x "$cache/$v/bin/python${v}t" ] && "$cache/$v/bin/python${v}t" -c \
        'import sys, sysconfig; sys.exit(0 if sysconfig.get_config_var("Py_GIL_DISABLED") else 1)'; then
        echo "$cache/$v/bin/python${v}t"
        exit 0
    fi
done

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
need=()
for pkg in build-essential dpkg-dev pkg-config libssl-dev zlib1g-dev libffi-dev libsqlite3-dev \
    libbz2-dev liblzma-dev uuid-dev libreadline-dev libncurses-dev libgdbm-dev libexpat1-dev; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
    say "installing build dependencies: ${need[*]}"
    as_root apt-get update -qq >&2
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >&2
fi

# A private apt: its own sources (Debian testing, deb-src only), lists and cache.
apt="$cache/apt"
mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$apt/etc/preferences.d"
cat > "$apt/sources.list" <<'EOF'
deb-src http://deb.debian.org/debian testing main
EOF
apt_opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
          -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt" -o "Dir::Etc::Preferences=/dev/null"
          -o "Dir::Etc::PreferencesParts=$apt/etc/preferences.d" -o "Debug::NoLocking=1"
          -o "APT::Sandbox::User=root")
say "fetching the source index of Debian testing"
apt-get "${apt_opts[@]}" update -qq >&2

src="$cache/src"
mkdir -p "$src"
built=""
for v in 3.14 3.13; do
    dir="$src/$v"
    rm -rf "$dir" && mkdir -p "$dir"
    say "downloading the source of python$v"
    if ! (cd "$dir" && apt-get "${apt_opts[@]}" source --download-only "python$v" >&2); then
        say "python$v: no source to be had from Debian testing; trying the next version"
        continue
    fi
    dsc=$(ls "$dir"/*.dsc | head -1)
    # Upstream's source as released (Debian's patches fit its system python: they turn
    # ensurepip off, for one). pip comes into each venv from PyPI (ci/ft-test.sh).
    (cd "$dir" && dpkg-source --no-check --skip-patches -x "$dsc" tree >/dev/null)
    say "building python$v with --disable-gil (several minutes)"
    log="$dir/build.log"
    if (cd "$dir/tree" && ./configure --disable-gil --prefix="$cache/$v" --without-ensurepip \
            >"$log" 2>&1 \
        && make -j"$(nproc)" >>"$log" 2>&1 && make install >>"$log" 2>&1); then
        built="$cache/$v/bin/python${v}t"
        break
    fi
    say "python$v did not build; the end of $log:"
    tail -20 "$log" >&2
done
rm -rf "$src"
if [ -z "$built" ]; then
    say "no free-threaded CPython could be built (see above)"
    exit 1
fi
"$built" -c 'import sys, sysconfig; assert sysconfig.get_config_var("Py_GIL_DISABLED"), "not free-threaded"; print(sys.version, file=sys.stderr)'
echo "$built"
