#!/usr/bin/env bash
# The client libraries of the conformance suite (tests/clients), in their own cached
# environments: their pins must not leak into the gateway's venv, and they disagree among
# themselves (litellm and llama-index need openai<3, openai-agents and pydantic-ai openai>=3).
#   scripts/install-clients.sh [DIR]   DIR default: $GATEWAY_CLIENTS_DIR or ~/.cache/gateway/clients
# Makes DIR/py-openai3 and DIR/py-openai2 (venvs from tests/clients/requirements-openai*.txt) and
# DIR/node (npm ci of tests/clients/node, run later with the machine's node). Each part is
# reused while its marker file holds the sha256 of the file it was built from. Prints DIR.
# Without node/npm the Node part is left out (the Node test says why; under CI=true it fails).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
dir="${1:-${GATEWAY_CLIENTS_DIR:-$HOME/.cache/gateway/clients}}"
mkdir -p "$dir"

hash_of() { sha256sum "$1" | cut -d' ' -f1; }

install_venv() {  # name requirements-file
  local venv="$dir/$1" req="$2" want
  want="$(hash_of "$req")"
  if [ -f "$venv/.complete" ] && [ "$(cat "$venv/.complete")" = "$want" ]; then
    return 0
  fi
  echo "installing $(basename "$req") into $venv (one time, about 2-4 minutes)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >"$dir/install-$1.log" 2>&1 \
    || { cat "$dir/install-$1.log" >&2; return 1; }
  "$venv/bin/pip" check >&2
  echo "$want" > "$venv/.complete"
}

install_node() {
  local node_dir="$dir/node" src="$here/tests/clients/node" want
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "node/npm not found: the Node SDK client tests will say so (and fail under CI=true)" >&2
    return 0
  fi
  want="$(cat "$src/package.json" "$src/package-lock.json" | sha256sum | cut -d' ' -f1)"
  if [ -f "$node_dir/.complete" ] && [ "$(cat "$node_dir/.complete")" = "$want" ]; then
    return 0
  fi
  echo "installing the openai npm package into $node_dir" >&2
  rm -rf "$node_dir"
  mkdir -p "$node_dir"
  cp "$src/package.json" "$src/package-lock.json" "$node_dir/"
  (cd "$node_dir" && npm ci --no-audit --no-fund --loglevel=error >"$dir/install-node.log" 2>&1) \
    || { cat "$dir/install-node.log" >&2; return 1; }
  echo "$want" > "$node_dir/.complete"
}

# The two venvs download and build independently: install them side by side.
install_venv py-openai3 "$here/tests/clients/requirements-openai3.txt" & p3=$!
install_venv py-openai2 "$here/tests/clients/requirements-openai2.txt" & p2=$!
install_node
status=0
wait "$p3" || status=1
wait "$p2" || status=1
[ "$status" = 0 ] || { echo "installing the client libraries failed" >&2; exit 1; }
echo "$dir"
