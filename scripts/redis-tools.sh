#!/usr/bin/env bash
# Installs the Redis command-line tools that tests/redis_tools.rs drives `hadal serve` with,
# idempotently: Debian's `redis-tools` (redis-cli, redis-benchmark) when either is missing, and
# with --server also `redis-server` (a reference server to compare replies against by hand).
# Nothing is started here. Uses apt-get only (Debian/Ubuntu), through sudo when not root.
set -euo pipefail

usage() { echo "usage: $0 [--server]" >&2; }

want_server=false
for arg in "$@"; do
  case "$arg" in
    --server) want_server=true ;;
    -h | --help) usage; exit 0 ;;
    *) usage; echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

packages=()
if command -v redis-cli >/dev/null && command -v redis-benchmark >/dev/null; then
  echo "redis-tools: present ($(redis-cli --version))"
else
  packages+=(redis-tools)
fi
if $want_server; then
  if command -v redis-server >/dev/null; then
    echo "redis-server: present ($(redis-server --version | head -n 1))"
  else
    packages+=(redis-server)
  fi
fi
[ ${#packages[@]} -eq 0 ] && exit 0

command -v apt-get >/dev/null || {
  echo "apt-get not found: install ${packages[*]} with this system's package manager" >&2
  exit 1
}
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || {
    echo "not root and sudo not found: install ${packages[*]} as root" >&2
    exit 1
  }
  sudo=(sudo)
fi

echo "installing with apt-get: ${packages[*]}"
export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# A package index can be stale on a fresh machine or image: refresh it, then install.
if ! { "${sudo[@]}" apt-get update -qq &&
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}"; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "apt-get failed to install ${packages[*]}" >&2
  exit 1
fi

for tool in redis-cli redis-benchmark; do
  command -v "$tool" >/dev/null || { echo "$tool is still missing after the install" >&2; exit 1; }
done
if $want_server; then
  command -v redis-server >/dev/null || {
    echo "redis-server is still missing after the install" >&2
    exit 1
  }
fi
echo "installed: ${packages[*]} ($(redis-cli --version))"
