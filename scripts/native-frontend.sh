#!/usr/bin/env bash
# The native front-end (`rnnserve serve --frontend native`, server/native_frontend.cc):
#
#   scripts/native-frontend.sh toolchain        apt: g++, pkg-config, libgrpc++-dev
#   scripts/native-frontend.sh build VENV DIR   toolchain, then compile it into DIR with the
#                                               server installed in VENV
#   scripts/native-frontend.sh runtime          apt: gRPC's C++ runtime libraries only
#
# The image's build stage runs `build`, its runtime stage `APT_CLEAN=1 ... runtime` and sets
# RNNSERVE_NATIVE_CACHE=DIR, so the image carries the binary but no compiler; `make test`
# runs `toolchain` (the server compiles the front-end on first use). Each step does nothing
# when what it installs is already there.
set -euo pipefail

apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    if [ "${APT_CLEAN:-0}" = 1 ]; then    # in an image build: keep no packages or lists
        $sudo apt-get clean
        $sudo rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
    fi
}

toolchain() {
    if command -v g++ >/dev/null 2>&1 && pkg-config --exists grpc++ 2>/dev/null; then
        echo "native front-end toolchain present: grpc++ $(pkg-config --modversion grpc++)"
        return
    fi
    apt_install g++ pkg-config libgrpc++-dev
    echo "installed: grpc++ $(pkg-config --modversion grpc++), $(g++ --version | head -1)"
}

case "${1:-}" in
    toolchain)
        toolchain ;;
    build)
        venv="${2:?usage: $0 build VENV DIR}" dir="${3:?usage: $0 build VENV DIR}"
        toolchain
        "$venv/bin/python" -P - "$dir" <<'PY'   # -P: the working directory never shadows it
import sys
from pathlib import Path

from rnnserve.server.native_frontend import binary

built = binary(Path(sys.argv[1]))
built.chmod(0o755)
print(f"native front-end: {built}")
PY
        ;;
    runtime)
        if ldconfig -p | grep 'libgrpc++\.so\.1\.51' >/dev/null; then
            echo "gRPC C++ runtime present"
        else
            apt_install libgrpc++1.51
        fi ;;
    *)
        echo "usage: $0 toolchain | build VENV DIR | runtime" >&2
        exit 2 ;;
esac
