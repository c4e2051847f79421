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

# edged's CRI tests run against a private containerd (scripts/containerd.sh),
# which needs root; without it they say they are skipped, and fail under CI.
if [[ $(id -u) -eq 0 ]]; then
  echo "== private containerd"
  cri_dir=$(mktemp -d "${TMPDIR:-/tmp}/kedge-cri.XXXXXX")
  stop_containerd() {
    local status=$?
    if ((status != 0)) && [[ -f $cri_dir/containerd.log ]]; then
      echo "== containerd's log (last 40 lines)"
      tail -n 40 "$cri_dir/containerd.log" || true
    fi
    scripts/containerd.sh stop "$cri_dir" || true
    rm -rf --one-file-system "$cri_dir" || true
    exit "$status"
  }
  trap stop_containerd EXIT
  trap 'exit 130' INT TERM
  KEDGE_CRI_SOCK=$(scripts/containerd.sh start "$cri_dir")
  KEDGE_CRI_SUBNET=$(cat "$cri_dir/subnet")
  export KEDGE_CRI_SOCK KEDGE_CRI_SUBNET
else
  echo "== not root: no private containerd, the CRI tests are skipped"
fi

echo "== cargo test"
cargo test --workspace --locked
