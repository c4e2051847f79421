#!/usr/bin/env bash
# The whole test suite: installs what the tests need, then formatting, lints
# and every test of the workspace. CI runs exactly this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

# A clean build gains nothing from incremental caches, and they are the
# bulk of a debug target directory: CI builds without them.
if [[ ${CI:-} == true ]]; then
  export CARGO_INCREMENTAL=0
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo test"
cargo test --workspace --locked
