#!/usr/bin/env bash
# Creates (once) the Python virtualenv holding PyTorch (CPU) for the training reference
# (scripts/torch_grad.py) and training benchmarks. Prints the venv's path.
#   EDGELM_TORCH_VENV overrides the location (default: ~/.cache/edgelm-venv-torch).
# PyTorch's CPU-only index (download.pytorch.org) is tried first; where it is unreachable
# (as on the project's build machines) PyPI's `torch` is installed (it pulls CUDA runtime
# wheels, several GB, but runs on the CPU without a GPU).
set -euo pipefail
venv="${EDGELM_TORCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/edgelm-venv-torch}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --upgrade pip >&2
fi
if ! "$venv/bin/python" -c "import torch, numpy, safetensors" 2>/dev/null; then
  "$venv/bin/pip" install -q numpy "safetensors>=0.4" >&2
  if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
    "$venv/bin/pip" install -q --timeout 30 --retries 0 torch --index-url https://download.pytorch.org/whl/cpu >&2 \
      || "$venv/bin/pip" install -q torch >&2
  fi
fi
echo "$venv"
