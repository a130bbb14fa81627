#!/bin/sh
# Install Debian packages the tests or benchmarks use, each only when its command is missing.
# Usage: ops/install-debian-tools.sh COMMAND:PACKAGE ...   e.g. faketime:faketime wrk:wrk
# Idempotent and silent when everything is there. Needs root and apt-get otherwise.
set -eu

missing=""
for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing="$missing ${pair#*:}"
done
[ -z "$missing" ] && exit 0

if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" -ne 0 ]; then
    echo "install-debian-tools.sh: missing packages:$missing; install them (as root, apt-get)" >&2
    exit 1
fi
echo "install-debian-tools.sh: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086 # word splitting of the package list is intended
apt-get install -y -qq --no-install-recommends $missing >/dev/null
