#!/usr/bin/env bash
# A local Debian base image for machines without an image registry: debootstrap a minimal
# bookworm with python3 + venv from the apt mirror this machine already uses, import it into
# podman as localhost/gateway-base:bookworm-<recipe hash>. Prints the image name.
#   scripts/container-base.sh
# Reused while it exists; the tag carries a hash of this script, so a changed recipe builds a
# new image (about a minute). GATEWAY_DEBIAN_MIRROR overrides the mirror.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
"$here/container-runtime.sh"

suite=bookworm
include=python3,python3-venv,ca-certificates
recipe_hash="$(sha256sum "$0" | cut -c1-12)"
image="localhost/gateway-base:$suite-$recipe_hash"

if podman image exists "$image"; then echo "$image"; exit 0; fi

# One build at a time on a shared machine; the second waits and then finds the image.
exec 9>/var/tmp/gateway-container-base.lock
flock 9
if podman image exists "$image"; then echo "$image"; exit 0; fi

mirror="${GATEWAY_DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  # The first Debian archive apt is set up with (one-line .list or deb822 .sources files).
  mirror="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
    | awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' \
    | grep -v -- '-security' | grep -E '/debian/?$' | head -n1 || true)"
fi
if [ -z "$mirror" ]; then
  mirror="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | awk '/^URIs:/ { print $2 }' | grep -v -- '-security' | grep -E '/debian/?$' | head -n1 || true)"
fi
mirror="${mirror:-http://deb.debian.org/debian}"

root="$(mktemp -d /var/tmp/gateway-base.XXXXXX)"
trap 'rm -rf "$root"' EXIT
echo "building $image from $mirror (debootstrap, about a minute)" >&2
start=$SECONDS
debootstrap --variant=minbase --include="$include" "$suite" "$root" "$mirror" >"$root.log" 2>&1 \
  || { tail -n 20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
# Slim as Debian's own container images: no package caches, lists, docs or locales, and dpkg
# told to leave docs out of later installs too.
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/* \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/* \
  "$root"/usr/share/info/*
cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
APT::Install-Recommends "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true"; };
EOF
tar -C "$root" -c . | podman import --quiet \
  --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' - "$image" >/dev/null
echo "built $image in $((SECONDS - start)) s" >&2
echo "$image"
