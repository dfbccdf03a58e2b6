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
echo "== cargo test"
cargo test --workspace --release --no-fail-fast 2>&1 | tee "${TMPDIR:-/tmp}/edgelm-test.log"
