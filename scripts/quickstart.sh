#!/usr/bin/env bash
# Starts the local Gantry stack on the bundled example config (examples/quickstart.yaml):
# Envoy on http://127.0.0.1:10000, Gantry's ext_proc, and the built-in mock provider, so it
# works offline. Set OPENAI_API_KEY (etc.) to use the real providers the config names.
# Extra arguments go to `gantry run` (e.g. --config my.yaml).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

./scripts/setup.sh
cargo build --release --quiet -p gantry
exec ./target/release/gantry run "$@"
