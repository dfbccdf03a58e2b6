#!/usr/bin/env bash
# Regenerates the quantization fixtures in crates/edgelm-quant/tests/data/: a synthetic
# F32 model (examples/make_quant_fixture.rs) and llama.cpp's llama-quantize output for each of
# the 17 file types edgelm writes, plus a synthetic importance matrix and llama-quantize's
# output with it for the 9 importance-weighted tensor types. Needs llama.cpp's tools (LLAMA_BIN, default
# ~/.cache/edgelm-ref/llama.cpp/build/bin; /work/shared/tools/llamacpp-tools.sh builds them).
# CI does not run this: the outputs are committed.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${LLAMA_BIN:-$HOME/.cache/edgelm-ref/llama.cpp/build/bin}"
out=crates/edgelm-quant/tests/data
mkdir -p "$out"
cargo run --release -q -p edgelm-quant --example make_quant_fixture -- "$out/source-f32.gguf" "$out/imatrix.gguf"
for t in F32 F16 BF16 Q8_0 Q6_K Q5_K_S Q5_K_M Q5_0 Q5_1 Q4_K_S Q4_K_M Q4_0 Q4_1 Q3_K_S Q3_K_M Q3_K_L Q2_K; do
  lower=$(echo "$t" | tr 'A-Z' 'a-z')
  "$bin/llama-quantize" "$out/source-f32.gguf" "$out/llama-$lower.gguf" "$t" 1 > "$out/.log" 2>&1 \
    || { cat "$out/.log"; exit 1; }
done
# With the importance matrix: one file type per importance-weighted tensor type.
for t in Q2_K Q3_K_S Q4_0 Q4_1 Q5_0 Q5_1 Q4_K_S Q5_K_S Q6_K; do
  lower=$(echo "$t" | tr 'A-Z' 'a-z')
  "$bin/llama-quantize" --imatrix "$out/imatrix.gguf" "$out/source-f32.gguf" "$out/llama-imatrix-$lower.gguf" "$t" 1 \
    > "$out/.log" 2>&1 || { cat "$out/.log"; exit 1; }
done
rm -f "$out/.log"
src="${LLAMA_SRC:-$HOME/.cache/edgelm-ref/llama.cpp/src/vendor/llama.cpp}"
git -C "$src" log -1 --format="made by llama-quantize of llama.cpp %H (%cs)" > "$out/LLAMA_VERSION" 2>/dev/null \
  || echo "made by llama-quantize (llama.cpp version unknown)" > "$out/LLAMA_VERSION"
ls -la "$out"
