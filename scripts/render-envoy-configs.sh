#!/usr/bin/env bash
# Renders envoy-configs/NAME.yaml from examples/NAME.yaml with `gantry envoy-config`.
# The e2e test envoy_configs fails when the checked-in files drift from a fresh render.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cargo build --quiet -p gantry
for example in examples/*.yaml; do
  name="$(basename "$example")"
  ./target/debug/gantry envoy-config --config "$example" --output "envoy-configs/$name"
  echo "rendered envoy-configs/$name"
done
