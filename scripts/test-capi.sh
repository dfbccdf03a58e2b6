#!/usr/bin/env bash
# The C API end to end (called by scripts/test.sh): builds examples/c/chat.c with gcc against
# the static and the shared library, runs it on the default model — its greedy reply must be
# the one `edgelm run --chat` gives — checks a cancelled reply and a bad model path, then runs
# it once under valgrind memcheck, which must report no error and no leak. Installs gcc and
# valgrind with apt when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_install() {
  if ! command -v apt-get >/dev/null; then return 1; fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || return 1
    sudo="sudo -n"
  fi
  $sudo apt-get install -y -q "$@" >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q "$@" >/dev/null 2>&1; }
}
for tool in gcc valgrind; do
  if ! command -v "$tool" >/dev/null; then
    echo "installing $tool with apt"
    apt_install "$tool" || { echo "error: $tool is missing and cannot be installed" >&2; exit 1; }
  fi
done

cargo build --release -q -p edgelm-capi -p edgelm-cli
rel="${CARGO_TARGET_DIR:-target}/release"
model=$("$rel/edgelm" fetch)
out="$rel/examples-c"
mkdir -p "$out"
cflags=(-std=c11 -Wall -Wextra -Werror -O2 -g -Icrates/edgelm-capi/include)
gcc "${cflags[@]}" examples/c/chat.c "$rel/libedgelm_capi.a" -lpthread -ldl -lm \
  -o "$out/chat"
gcc "${cflags[@]}" examples/c/chat.c -L"$rel" -ledgelm_capi -o "$out/chat-shared"

question="What is the capital of France?"
echo "C example (static library): greedy reply vs edgelm run --chat"
"$out/chat" -m "$model" -n 24 --temp 0 "$question" >"$out/reply.txt" 2>"$out/reply.err" \
  || { cat "$out/reply.err" >&2; exit 1; }
"$rel/edgelm" run -m "$model" --chat -q -n 24 --temp 0 -p "$question" >"$out/cli.txt"
if [ ! -s "$out/reply.txt" ] || ! cmp -s "$out/reply.txt" "$out/cli.txt"; then
  echo "error: the C example's reply differs from edgelm run --chat's" >&2
  diff "$out/reply.txt" "$out/cli.txt" >&2 || true
  exit 1
fi
sed 's/^/  /' "$out/reply.txt"

echo "C example (shared library): two turns and a reply cancelled by another thread"
LD_LIBRARY_PATH="$rel" "$out/chat-shared" -m "$model" -n 16 --temp 0 --demo-cancel \
  "Hi" "Name a colour." >"$out/demo.txt" 2>"$out/demo.err" || { cat "$out/demo.err" >&2; exit 1; }
grep -q "cancelled\]" "$out/demo.err"

echo "C example: a bad model path is an error with a message, not a crash"
set +e
"$out/chat" -m /nonexistent/model.gguf "Hi" >/dev/null 2>"$out/bad.err"
rc=$?
set -e
if [ "$rc" != 1 ] || ! grep -q "cannot read the GGUF file /nonexistent/model.gguf" "$out/bad.err"; then
  echo "error: expected exit 1 and a message, got $rc:" >&2
  cat "$out/bad.err" >&2
  exit 1
fi

# valgrind emulates no AVX-512: EDGELM_NO_VNNI=1 keeps the kernels on AVX2. One thread, a short
# prompt and three tokens keep it to a few minutes.
echo "C example under valgrind memcheck (a few minutes)"
EDGELM_NO_VNNI=1 valgrind -q --leak-check=full --error-exitcode=1 --num-callers=40 \
  --suppressions=examples/c/valgrind.supp \
  "$out/chat" -m "$model" -t 1 -n 4 --temp 0 -c 128 -s "Be brief." --demo-cancel \
  </dev/null >"$out/valgrind.txt" 2>"$out/valgrind.err" \
  || { cat "$out/valgrind.err" >&2; echo "error: valgrind found errors or leaks" >&2; exit 1; }
grep -q "cancelled\]" "$out/valgrind.err"
echo "valgrind: no errors, no leaks"
