#!/usr/bin/env bash
# promtool (from Debian's prometheus package, unpacked without installing it) for the tests
# that check deploy/prometheus. Prints its path.
#   scripts/install-promtool.sh [DIR]    DIR default: ~/.cache/gateway/promtool
set -euo pipefail
dir="${1:-$HOME/.cache/gateway/promtool}"
bin="$dir/usr/bin/promtool"
if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
mkdir -p "$dir"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
( cd "$tmp" && { apt-get download prometheus >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get download prometheus >/dev/null; }; } )
dpkg -x "$tmp"/prometheus_*.deb "$dir"
"$bin" --version >/dev/null
echo "$bin"
