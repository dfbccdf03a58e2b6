#!/usr/bin/env bash
# Creates (once) the Python virtualenv holding the reference peers used to generate test fixtures
# and run side-by-side benchmarks: llama-cpp-python (built from source, AMX off: llama.cpp's AMX
# matmul crashes in these VMs), gguf (reference quantize/dequantize) and numpy.
# Prints the venv's path. Usage: scripts/ref-venv.sh [--no-llama]
#   EDGELM_REF_VENV overrides the location (default: ~/.cache/edgelm-ref/venv).
set -euo pipefail
venv="${EDGELM_REF_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/edgelm-ref/venv}"
want_llama=1
[ "${1:-}" = "--no-llama" ] && want_llama=0
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q --upgrade pip >&2
fi
"$venv/bin/python" -c "import gguf, numpy" 2>/dev/null || "$venv/bin/pip" install -q "gguf==0.19.0" numpy >&2
if [ "$want_llama" = 1 ] && ! "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=ON \
-DGGML_AVX512_VNNI=ON -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
    "$venv/bin/pip" install -q --no-cache-dir "llama-cpp-python==0.3.36" >&2
fi
echo "$venv"
