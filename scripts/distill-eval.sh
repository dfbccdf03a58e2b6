#!/usr/bin/env bash
# Before/after table of a distilled student (docs/distillation.md): for each model, PPL on
# WikiText-2 raw test and on a held-out text, KL divergence to the teacher (edgelm eval, the
# teacher as base), decode tokens/s (edgelm bench), file size; then the student loaded by
# llama.cpp's llama-perplexity on the same windows (checks that llama.cpp runs the export).
#
# usage: scripts/distill-eval.sh TEACHER.gguf HELDOUT.txt OUTDIR CHUNKS NAME=STUDENT.gguf...
#   env: EDGELM (binary, default target/release/edgelm), THREADS (default 2),
#        LLAMA_BIN (default ~/.cache/edgelm-ref/llama.cpp/build/bin), WIKI (WikiText-2 test)
set -euo pipefail
teacher=$1 heldout=$2 out=$3 chunks=$4
shift 4
edgelm=${EDGELM:-target/release/edgelm}
threads=${THREADS:-2}
llama_bin=${LLAMA_BIN:-$HOME/.cache/edgelm-ref/llama.cpp/build/bin}
wiki=${WIKI:-$(dirname "$0")/../../shared/data/wikitext-2-raw-test.txt}
mkdir -p "$out"
for spec in "$@"; do
  name=${spec%%=*} model=${spec#*=}
  for text in wiki heldout; do
    f=$wiki; [ "$text" = heldout ] && f=$heldout
    "$edgelm" eval --base "$teacher" -m "$model" -f "$f" -c 512 --chunks "$chunks" \
      --json -t "$threads" > "$out/$name.$text.json"
    echo "$name $text: $(cat "$out/$name.$text.json")"
  done
  "$edgelm" bench -m "$model" -p 0 -n 64 -r 3 -t "$threads" --json > "$out/$name.bench.json"
  echo "$name bench: $(cat "$out/$name.bench.json")"
  echo "$name size: $(stat -c %s "$model") bytes"
done
"$edgelm" bench -m "$teacher" -p 0 -n 64 -r 3 -t "$threads" --json > "$out/teacher.bench.json"
echo "teacher bench: $(cat "$out/teacher.bench.json")"
# llama.cpp loads each student and scores the same windows of WikiText-2.
if [ -x "$llama_bin/llama-perplexity" ]; then
  for spec in "$@"; do
    name=${spec%%=*} model=${spec#*=}
    "$llama_bin/llama-perplexity" -m "$model" -f "$wiki" -c 512 --chunks "$chunks" \
      -t "$threads" > "$out/$name.llama-perplexity.txt" 2>&1 || {
        echo "llama-perplexity failed on $model"; tail -5 "$out/$name.llama-perplexity.txt"; exit 1; }
    echo "$name llama.cpp: $(grep -E 'Final estimate' "$out/$name.llama-perplexity.txt")"
  done
else
  echo "skipped: llama-perplexity not built at $llama_bin (/work/shared/tools/llamacpp-tools.sh)"
fi
