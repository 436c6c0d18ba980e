#!/usr/bin/env bash
# Build an image of this repository with podman on the local Debian base
# (scripts/container-base.sh), as the tests and docker-compose.yml use it here. Prints its id.
#   scripts/container-build.sh gateway [TAG]      Dockerfile           TAG default localhost/vllm-thinking-gateway:dev
#   scripts/container-build.sh prometheus [TAG]   deploy/prometheus/Containerfile
#                                                 TAG default localhost/gateway-prometheus:dev
# Layers are cached: a rebuild after a code change takes seconds. pip inside the build trusts
# the host's CA bundle ($PIP_CERT, $SSL_CERT_FILE or Debian's), mounted read-only for the
# build only. Extra arguments after TAG go to `podman build`.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:?usage: scripts/container-build.sh gateway|prometheus [TAG] [podman build args]}"
shift
case "$what" in
  gateway) file=Dockerfile; tag="${1:-localhost/vllm-thinking-gateway:dev}" ;;
  prometheus) file=deploy/prometheus/Containerfile; tag="${1:-localhost/gateway-prometheus:dev}" ;;
  *) echo "unknown image $what (gateway or prometheus)" >&2; exit 2 ;;
esac
[ $# -gt 0 ] && shift

base="${GATEWAY_CONTAINER_BASE:-$(scripts/container-base.sh)}"
cert="${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"
args=(--build-arg "BASE_IMAGE=$base")
if [ -f "$cert" ]; then
  # Its directory over the base's /etc/ssl/certs, for the RUN steps only: mounting onto a path
  # the base already has leaves not even an empty mount point in the image.
  cert="$(readlink -f "$cert")"
  args+=(--volume "$(dirname "$cert"):/etc/ssl/certs:ro"
         --build-arg "PIP_CERT=/etc/ssl/certs/$(basename "$cert")")
fi
iid="$(mktemp)"
trap 'rm -f "$iid"' EXIT
podman --runtime runc build --format docker --network host --layers --quiet --iidfile "$iid" \
  "${args[@]}" -f "$file" -t "$tag" "$@" . >&2
cat "$iid"
echo
