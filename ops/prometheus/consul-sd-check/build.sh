#!/usr/bin/env bash
# Build consul-sd-check (Prometheus' own Consul service discovery as a command) once.
#
#   ops/prometheus/consul-sd-check/build.sh [OUT_DIR]
#       (default: $PEERING_CONSUL_SD_CACHE or <repo>/.cache/consul-sd-check)
#
# Builds OUT_DIR/consul-sd-check when it is missing or older than main.go, go.mod, go.sum or
# this script, then prints the binary's path as the last line on stdout. Go's own caches hold
# the downloaded modules (GOMODCACHE) and compiled packages (GOCACHE); a later run with an
# up-to-date binary does nothing and needs no network. Needs Go >= the go.mod's go line, and
# the Go module proxy on a cold cache (about 180 MB of modules).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:-${PEERING_CONSUL_SD_CACHE:-$here/../../../.cache/consul-sd-check}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
bin=$out/consul-sd-check

stale=0
if [ ! -x "$bin" ]; then
  stale=1
else
  for src in main.go go.mod go.sum build.sh; do
    if [ "$here/$src" -nt "$bin" ]; then
      stale=1
    fi
  done
fi

if [ "$stale" -eq 1 ]; then
  if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
    PATH=$PATH:/usr/local/go/bin
  fi
  command -v go >/dev/null || { echo "build.sh: go not found on PATH (install Go)" >&2; exit 1; }
  echo "build.sh: building $bin with $(go version)" >&2
  tmp=$(mktemp "$out/.consul-sd-check.XXXXXX")
  trap 'rm -f "$tmp"' EXIT
  (cd "$here" && GOFLAGS=-mod=mod go build -o "$tmp" .) >&2
  mv -f "$tmp" "$bin"
  trap - EXIT
fi
echo "$bin"
