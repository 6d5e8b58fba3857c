#!/usr/bin/env bash
# Install the training and export stack into a fresh virtual environment.
#
#   scripts/install-train.sh VENV
#
# The Dockerfile's optional models stage RUNs this. TORCH_INDEX_URL (optional) is an extra
# package index for a CPU-only torch build, so the stage does not download CUDA wheels just
# to train two small models; TORCH_WHEELS (optional) is a directory holding such a wheel
# (pip --find-links) for machines that cannot reach that index. Pins still come from
# pyproject.toml ([train]): torch==2.13.0 also matches the local version 2.13.0+cpu.
set -euo pipefail

venv="${1:-}"
if [ -z "$venv" ]; then
    echo "usage: $0 VENV" >&2
    exit 2
fi
src="$(cd "$(dirname "$0")/.." && pwd)"
# In an image build, the optional pip-ca secret (Dockerfile) is the CA bundle pip trusts.
if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi
python="${PYTHON:-python3}"

# shellcheck source=stage-source.sh source-path=SCRIPTDIR
. "$src/scripts/stage-source.sh"
build_src="$(stage_source "$src")"
if [ "$build_src" != "$src" ]; then trap 'rm -rf "$build_src"' EXIT; fi

extra=()
if [ -n "${TORCH_INDEX_URL:-}" ]; then extra+=(--extra-index-url "$TORCH_INDEX_URL"); fi
if [ -n "${TORCH_WHEELS:-}" ]; then extra+=(--find-links "$TORCH_WHEELS"); fi

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --no-cache-dir --quiet --upgrade pip
"$venv/bin/python" -m pip install --no-cache-dir --quiet "${extra[@]}" "${build_src}[train]"
"$venv/bin/python" -c "import torch, onnx; print('install-train: torch', torch.__version__)"
