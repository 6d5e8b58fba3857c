#!/usr/bin/env bash
# The GPU check (bench/gpu_check.py): one command that proves the CUDA path on a GPU machine.
#
#   scripts/gpu-check.sh prepare       # on a development machine with .[dev] installed:
#                                      # trains and exports the check's models (~1 min)
#   scripts/gpu-check.sh [check]       # on the GPU machine (under 5 minutes)
#   scripts/gpu-check.sh --cpu-smoke   # the same sections with CPU in place of CUDA
#
# The GPU machine installs nothing. It needs, already there or carried:
#   - this repository's tracked files, and build/gpu-check/ made by `prepare` (a few MB);
#   - python3 >= 3.11 with the [serve] dependencies of pyproject.toml importable
#     (numpy, onnxruntime-gpu==1.31.1, tokenizers, pydantic, pydantic-settings, typer, rich,
#     protobuf, grpcio, grpcio-health-checking, grpcio-reflection, prometheus-client,
#     tritonclient[grpc]); PYTHON=/path/to/python picks the interpreter;
#   - CUDA 13 and cuDNN 9 user-space libraries (system packages, or the nvidia-* wheels of
#     `onnxruntime-gpu[cuda,cudnn]` in that Python), and an NVIDIA driver R580 or newer.
# rnnserve itself is not installed: this script links the repository's folders into a
# temporary `rnnserve` package and puts it on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x .venv/bin/python ]; then python=.venv/bin/python; else python=python3; fi
fi

shim="$(mktemp -d)"
trap 'rm -rf "$shim"' EXIT
mkdir "$shim/rnnserve"
for file in "$root"/rnnserve/*.py; do ln -s "$file" "$shim/rnnserve/"; done
for part in server bench protos export train; do ln -s "$root/$part" "$shim/rnnserve/$part"; done
export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"

missing="$("$python" - <<'EOF'
import importlib.util
need = ["numpy", "onnxruntime", "tokenizers", "pydantic", "pydantic_settings", "typer",
        "google.protobuf", "grpc", "grpc_health", "grpc_reflection", "prometheus_client",
        "tritonclient.grpc"]
print(" ".join(n for n in need if importlib.util.find_spec(n.split(".")[0]) is None))
EOF
)"
if [ -n "$missing" ]; then
    echo "gpu-check: $python lacks: $missing (see the header of $0)" >&2
    exit 2
fi

command="${1:-check}"
case "$command" in
    prepare) exec "$python" -m rnnserve.bench.gpu_check prepare "${@:2}" ;;
    check) exec "$python" -m rnnserve.bench.gpu_check check "${@:2}" ;;
    --cpu-smoke) exec "$python" -m rnnserve.bench.gpu_check check --cpu-smoke "${@:2}" ;;
    *) echo "usage: $0 [prepare|check|--cpu-smoke] [--dir DIR]" >&2; exit 2 ;;
esac
