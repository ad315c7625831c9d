#!/usr/bin/env bash
# Screenshot perf/dashboard.html with headless Chromium into perf/dashboard.png.
#
#   bash perf/screenshot.sh [PAGE.html [OUT.png [WIDTH,HEIGHT]]]
#
# Installs Debian's chromium package when it is missing (needs root). Runs with a throwaway
# profile and no network features; the page itself needs none (file://). Shrinks the PNG with
# pngquant when that is installed.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
page="$(realpath "${1:-$here/dashboard.html}")"
out="$(realpath -m "${2:-$here/dashboard.png}")"
size="${3:-1400,2200}"

[ -f "$page" ] || { echo "no $page: run .venv/bin/python perf/render.py first" >&2; exit 1; }
browser="$(command -v chromium || command -v chromium-browser || true)"
if [ -z "$browser" ]; then
    apt-get install -y --no-install-recommends chromium >/dev/null
    browser="$(command -v chromium)"
fi

profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --hide-scrollbars --user-data-dir="$profile" \
    --screenshot="$out" --window-size="$size" "file://$page" 2>"$profile/chromium.log" \
    || { cat "$profile/chromium.log" >&2; exit 1; }
[ -s "$out" ] || { cat "$profile/chromium.log" >&2; echo "no screenshot written" >&2; exit 1; }
# A 256-colour palette makes the PNG ~2.5x smaller with no visible change (optional tool).
if command -v pngquant >/dev/null; then
    pngquant --quality=70-95 --speed 1 --strip --force --output "$out" "$out" || true
else
    echo "(pngquant not installed: PNG left as Chromium wrote it; apt-get install pngquant)" >&2
fi
echo "wrote $out ($(stat -c %s "$out") bytes)"
