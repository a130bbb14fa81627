#!/bin/sh
# Install Debian's `prometheus` package (prometheus + promtool) when either is missing.
# Idempotent and silent when both are already installed. Needs root and apt-get.
# Usage: ops/prometheus/install.sh      (the Makefile calls it before the test suite)
#
# The package's postinst may start a prometheus.service on :9090 where systemd runs;
# tests never use that one (they start their own on a free port).
set -eu

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install.sh: prometheus/promtool are missing and apt-get is not available;" >&2
    echo "install.sh: install Prometheus 2.x (prometheus and promtool on PATH) by hand." >&2
    exit 1
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: prometheus/promtool are missing; run as root to install them:" >&2
    echo "install.sh:   sudo $0" >&2
    exit 1
fi

echo "install.sh: installing Debian's prometheus package" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null

for tool in prometheus promtool; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "install.sh: $tool still not on PATH after installing the package" >&2
        exit 1
    fi
done
echo "install.sh: $(prometheus --version 2>&1 | head -n 1)" >&2
