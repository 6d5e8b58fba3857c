#!/usr/bin/env bash
# Install what `rnnserve serve --frontend native` compiles its C++ gRPC front-end with
# (server/native/frontend.cc): g++, pkg-config and Debian's gRPC C++ headers and libraries.
# Idempotent: does nothing when pkg-config already knows grpc++ and g++ is on PATH.
set -euo pipefail

if command -v g++ >/dev/null 2>&1 && pkg-config --exists grpc++ 2>/dev/null; then
    echo "native front-end toolchain already installed: grpc++ $(pkg-config --modversion grpc++)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends g++ pkg-config libgrpc++-dev >/dev/null
echo "installed: grpc++ $(pkg-config --modversion grpc++), $(g++ --version | head -1)"
