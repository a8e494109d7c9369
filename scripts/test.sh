#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian 12 machine (as root),
# installing what it needs. Guest images are cached under /var/cache/rigbox
# by recipe hash, so only the first run builds them.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (VM tests need network namespaces)" >&2; exit 1; }
source scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
export RUST_BACKTRACE=1
start=$(date +%s)
step() { echo; echo "==> [$(( $(date +%s) - start ))s] $*"; }

step "build (debug, all targets)"
cargo build --workspace --all-targets

step "guest images for the tests (kernel, base, dev)"
target/debug/rigboxd image build --template base --template dev

status=0
step "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --profile ci --no-fail-fast || status=1
else
  cargo test --workspace --no-fail-fast -- --test-threads 2 || status=1
fi

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings || status=1

step "done (status $status)"
exit $status
