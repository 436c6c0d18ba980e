#!/usr/bin/env bash
# Make sure this machine can build and run the images: podman with runc, debootstrap (for the
# local Debian base image, scripts/container-base.sh) and iproute2 (the compose test's own
# network namespace). Installs what is missing with apt-get when run as root; otherwise fails
# with the install line. Quiet when all is there.
#
# Also sets `default_ulimits = []` in /etc/containers/containers.conf when that file sets no
# default_ulimits: some sandboxes (this project's machines among them) do not let a container
# raise its process limits, and podman's defaults try to.
set -euo pipefail

packages=(podman runc debootstrap iproute2)
install_line="apt-get install -y --no-install-recommends ${packages[*]}"

missing=()
for cmd in podman runc debootstrap ip; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "container runtime missing (${missing[*]}): install it with" >&2
    echo "  sudo $install_line" >&2
    exit 1
  fi
  echo "installing ${packages[*]} (container tests; one time)" >&2
  apt() { apt-get -o DPkg::Lock::Timeout=600 -qq "$@" >/dev/null; }
  apt install -y --no-install-recommends "${packages[@]}" \
    || { apt update && apt install -y --no-install-recommends "${packages[@]}"; } \
    || { echo "could not install: $install_line" >&2; exit 1; }
fi

conf=/etc/containers/containers.conf
if ! grep -qs '^[[:space:]]*default_ulimits' "$conf"; then
  if [ "$(id -u)" != 0 ]; then
    echo "note: $conf sets no default_ulimits; if podman fails to set rlimits, add" >&2
    echo "  [containers]  default_ulimits = []" >&2
  else
    mkdir -p "$(dirname "$conf")"
    if grep -qs '^\[containers\]' "$conf"; then
      sed -i 's/^\[containers\]/[containers]\ndefault_ulimits = []/' "$conf"
    else
      printf '\n[containers]\ndefault_ulimits = []\n' >> "$conf"
    fi
  fi
fi
