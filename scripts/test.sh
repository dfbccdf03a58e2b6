#!/usr/bin/env bash
# The project's test command (README): installs nothing beyond the Rust toolchain, fetches the
# default model into the cache if it is missing, then runs formatting, lints and every test.
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
echo "== cargo test"
cargo test --workspace --release --no-fail-fast 2>&1 | tee "${TMPDIR:-/tmp}/edgelm-test.log"
