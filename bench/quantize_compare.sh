#!/usr/bin/env bash
# Quantization speed: edgelm quantize vs llama.cpp's llama-quantize on the same F32 model, same
# thread count, interleaved (edgelm, llama, edgelm, llama, ...), median wall time per type, and
# whether the two output files are byte-identical. Wall time includes writing the file (page
# cache); user CPU time is the quantization work itself.
# Usage: bench/quantize_compare.sh F32_MODEL [REPS] [THREADS] [TYPES...]
#   LLAMA_BIN: llama.cpp's build/bin (default ~/.cache/edgelm-ref/llama.cpp/build/bin).
#   The F32 model: `edgelm quantize MODEL f32.gguf --type F32` (the default model's dump).
set -euo pipefail
src="$1"; reps="${2:-3}"; threads="${3:-2}"; shift $(( $# >= 3 ? 3 : $# ))
types=("$@"); [ ${#types[@]} -eq 0 ] && types=(Q4_K_M Q6_K Q8_0 Q4_0 Q2_K)
cd "$(dirname "$0")/.."
edgelm=target/release/edgelm
bin="${LLAMA_BIN:-$HOME/.cache/edgelm-ref/llama.cpp/build/bin}"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), threads: $threads, reps: $reps, commit: $(git rev-parse --short HEAD)"
printf "%-8s %10s %10s %7s %10s %10s %7s %s\n" type edgelm_s llama_s ratio edgelm_cpu llama_cpu ratio identical
for t in "${types[@]}"; do
  for f in ew eu lw lu; do : > "$tmp/$f"; done
  for _ in $(seq "$reps"); do
    /usr/bin/time -o "$tmp/t" -f "%e %U" "$edgelm" quantize "$src" "$tmp/e.gguf" --type "$t" -q -t "$threads"
    read -r w u < "$tmp/t"; echo "$w" >> "$tmp/ew"; echo "$u" >> "$tmp/eu"
    /usr/bin/time -o "$tmp/t" -f "%e %U" "$bin/llama-quantize" "$src" "$tmp/l.gguf" "$t" "$threads" > /dev/null 2>&1
    read -r w u < "$tmp/t"; echo "$w" >> "$tmp/lw"; echo "$u" >> "$tmp/lu"
  done
  ew=$(median < "$tmp/ew"); lw=$(median < "$tmp/lw"); eu=$(median < "$tmp/eu"); lu=$(median < "$tmp/lu")
  same=$(cmp -s "$tmp/e.gguf" "$tmp/l.gguf" && echo yes || echo NO)
  printf "%-8s %10.2f %10.2f %7.2f %10.2f %10.2f %7.2f %s\n" "$t" "$ew" "$lw" "$(echo "$ew / $lw" | bc -l)" \
    "$eu" "$lu" "$(echo "$eu / $lu" | bc -l)" "$same"
done
