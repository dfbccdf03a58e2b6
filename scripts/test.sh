#!/usr/bin/env bash
# The project's test command (README): installs nothing beyond the Rust toolchain, a Python
# virtualenv with the openai client (scripts/py-venv.sh, for the server tests) and, with apt, an
# aarch64 cross linker, qemu-user, gcc and valgrind; fetches the default model into the cache if
# it is missing, then runs formatting, lints and every test.
# Tests that need ../shared/data or the model say so and skip when those are absent.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
echo "== fetch the default model (if missing)"
cargo run --release -q -p edgelm-cli -- fetch
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --release -q -- -D warnings
echo "== cargo check, aarch64 (the library crates; the binary's TLS stack needs a C cross compiler)"
if rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu \
  || timeout 120 rustup target add aarch64-unknown-linux-gnu >/dev/null 2>&1; then
  cargo check --release -q --target aarch64-unknown-linux-gnu -p edgelm-gguf -p edgelm-kernels \
    -p edgelm-tokenizer -p edgelm-model -p edgelm-runtime -p edgelm-train
else
  echo "skipped: the aarch64-unknown-linux-gnu standard library cannot be installed here"
fi
echo "== aarch64 under qemu-user: kernel tests (NEON + dotprod, then plain NEON), real-model logits vs x86"
# Needs a cross linker and qemu-user, installed once with apt (root or passwordless sudo).
aarch64_tools() {
  command -v qemu-aarch64 >/dev/null && command -v aarch64-linux-gnu-gcc >/dev/null \
    && [ -d /usr/aarch64-linux-gnu/lib ]
}
if ! aarch64_tools && command -v apt-get >/dev/null 2>&1; then
  sudo_cmd=""
  if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo -n"; fi
  { $sudo_cmd apt-get update -qq \
    && $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross; } >/dev/null 2>&1 || true
fi
if aarch64_tools && rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
  a64=(env CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
    "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64 -L /usr/aarch64-linux-gnu")
  for cpu in max cortex-a72; do # max has dotprod and fp16; the Cortex-A72 has neither
    QEMU_CPU=$cpu "${a64[@]}" cargo test --release -q -p edgelm-kernels \
      --target aarch64-unknown-linux-gnu
  done
  model="$HOME/.cache/edgelm/models/SmolLM2-135M-Instruct.Q4_1.gguf"
  if [ -f "$model" ]; then
    # The whole [16, vocab] logits of the real model, x86-64 (AVX2) and aarch64 (NEON +
    # dotprod, under qemu): the kernels mirror each other's arithmetic, so the bytes match.
    dumps="${TMPDIR:-/tmp}/edgelm-logits"
    EDGELM_DUMP_LOGITS="$dumps-x86_64.bin" cargo test --release -q -p edgelm-model \
      --test real_model >"$dumps-x86_64.log" 2>&1 || { tail -30 "$dumps-x86_64.log"; exit 1; }
    QEMU_CPU=max EDGELM_DUMP_LOGITS="$dumps-aarch64.bin" "${a64[@]}" cargo test --release -q \
      -p edgelm-model --target aarch64-unknown-linux-gnu --test real_model \
      >"$dumps-aarch64.log" 2>&1 || { tail -30 "$dumps-aarch64.log"; exit 1; }
    cmp "$dumps-x86_64.bin" "$dumps-aarch64.bin"
    echo "real-model logits: aarch64 identical to x86-64"
  else
    echo "skipped real-model logits: $model is absent"
  fi
else
  echo "skipped: qemu-aarch64 / aarch64-linux-gnu-gcc unavailable (no apt-get or no root)"
fi
echo "== Python virtualenv with the openai client (server tests; cached in ~/.cache/edgelm-venv)"
bash scripts/py-venv.sh >/dev/null || echo "warning: no Python virtualenv; the openai-client server test will skip"
echo "== a TrueType font for compress-report's PNG charts (fonts-dejavu-core, with apt)"
if [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] && command -v apt-get >/dev/null 2>&1; then
  sudo_cmd=""; if [ "$(id -u)" -ne 0 ]; then sudo_cmd="sudo -n"; fi
  { $sudo_cmd apt-get update -qq && $sudo_cmd env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq fonts-dejavu-core; } >/dev/null 2>&1 \
    || echo "warning: fonts-dejavu-core not installed; the chart checks will skip"
fi
echo "== cargo test"
cargo test --workspace --release --no-fail-fast 2>&1 | tee "${TMPDIR:-/tmp}/edgelm-test.log"
echo "== C API example (gcc, real model, valgrind)"
bash scripts/test-capi.sh
