#!/usr/bin/env bash
# Install Debian's nghttp2-client (h2load and nghttp) for the capacity benchmark and its test.
# Idempotent: does nothing when both are already on PATH.
set -euo pipefail

if command -v h2load >/dev/null 2>&1 && command -v nghttp >/dev/null 2>&1; then
    echo "h2load already installed: $(command -v h2load)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends nghttp2-client >/dev/null
echo "installed: $(h2load --version 2>&1 | head -1)"
