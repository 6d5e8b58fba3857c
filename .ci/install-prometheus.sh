#!/usr/bin/env bash
# Install Debian's prometheus package (the server binary and promtool) for the metrics tests.
# Idempotent: does nothing when `prometheus` is already on PATH. Never starts the service:
# tests/metrics/ runs the binary itself with a generated config, ports and storage dir.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1; then
    echo "prometheus already installed: $(command -v prometheus)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

export DEBIAN_FRONTEND=noninteractive
# policy-rc.d keeps dpkg's postinst from starting the daemon on hosts with an init system.
POLICY=/usr/sbin/policy-rc.d
CREATED_POLICY=0
if [ ! -e "$POLICY" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
    $SUDO chmod +x "$POLICY"
    CREATED_POLICY=1
fi
cleanup() { if [ "$CREATED_POLICY" = 1 ]; then $SUDO rm -f "$POLICY"; fi; }
trap cleanup EXIT

$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
echo "installed: $(prometheus --version 2>&1 | head -1)"
command -v promtool >/dev/null 2>&1 && echo "promtool: $(command -v promtool)" || true
