#!/usr/bin/env bash
# Runs everything CI runs, on a fresh machine or a warm one: formatting, lints, and every test
# (unit, model, crash, corruption, CLI, the object-store conformance suite against real
# servers it installs itself, and redis-cli/redis-benchmark against `hadal serve`). Caches live
# under ~/.cache/hadal.
set -euo pipefail
cd "$(dirname "$0")/.."

export HADAL_CACHE="${HADAL_CACHE:-$HOME/.cache/hadal}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HADAL_CACHE/target}"
mkdir -p "$HADAL_CACHE"
# Incremental caches only pay off for edit-compile loops; in CI they cost gigabytes of disk.
if [ "${CI:-}" = "true" ]; then export CARGO_INCREMENTAL=0; fi

step() { printf '\n== %s ==\n' "$*"; }
started=$(date +%s)

step "format"
cargo fmt --all --check

step "lint"
cargo clippy --workspace --all-targets --all-features -- -D warnings

if [ -x scripts/object-stores.sh ] || [ -f scripts/object-stores.sh ]; then
  step "object-store servers (install if missing)"
  bash scripts/object-stores.sh
fi

step "redis tools (install if missing)"
bash scripts/redis-tools.sh

step "tests"
cargo test --workspace --all-features

printf '\n== all green in %ss ==\n' "$(( $(date +%s) - started ))"
