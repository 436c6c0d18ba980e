#!/usr/bin/env bash
# Debian's chromium for the playground's browser tests (tests/e2e/test_playground.py), which
# Playwright drives through executable_path: Playwright never downloads a browser here.
# Prints the browser's path on stdout. When it is missing, installs it with
#   apt-get install --no-install-recommends chromium
# (as root, or through passwordless sudo). If that is impossible it says why on stderr and
# prints nothing: the browser tests then fail, loudly, naming the missing browser.
set -euo pipefail
for name in "${GATEWAY_CHROMIUM:-}" chromium chromium-browser; do
    if [ -n "$name" ] && path="$(command -v "$name" 2>/dev/null)"; then
        echo "$path"
        exit 0
    fi
done
if [ "$(id -u)" = 0 ]; then
    sudo=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
else
    echo "install-chromium: chromium is missing; run: sudo apt-get install chromium" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt=("${sudo[@]}" apt-get -o DPkg::Lock::Timeout=600 -q)
"${apt[@]}" update >&2
"${apt[@]}" install -y --no-install-recommends chromium >&2
command -v chromium
