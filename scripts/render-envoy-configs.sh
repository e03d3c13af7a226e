#!/usr/bin/env bash
# Renders envoy-configs/NAME.yaml from examples/NAME.yaml with `gantry envoy-config`, and
# envoy-configs/module/NAME.yaml with `--mode module` for the examples the dynamic module
# supports (no JWTs, no governance). The e2e test envoy_configs fails when the checked-in files
# drift from a fresh render.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cargo build --quiet -p gantry
for example in examples/*.yaml; do
  name="$(basename "$example")"
  ./target/debug/gantry envoy-config --config "$example" --output "envoy-configs/$name"
  echo "rendered envoy-configs/$name"
done
mkdir -p envoy-configs/module
for name in quickstart openai-compatible mcp-bridge; do
  ./target/debug/gantry envoy-config --mode module --config "examples/$name.yaml" \
    --output "envoy-configs/module/$name.yaml"
  echo "rendered envoy-configs/module/$name.yaml"
done
