#!/usr/bin/env bash
# Idempotent: create (or reuse) the PyTriton peer venv under .cache/peers/pytriton.
# PyTriton ships a Triton server binary that links against libpython; run it with
# LD_LIBRARY_PATH=<interpreter LIBDIR> (bench/peers/pytriton_server.py prints the path).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${RNNSERVE_PEERS_DIR:-$ROOT/.cache/peers}/pytriton"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import pytriton, onnxruntime, tokenizers" 2>/dev/null; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "nvidia-pytriton==0.7.0" "onnxruntime==1.31.1" "tokenizers==0.23.3"
fi
"$VENV/bin/python" -c "import pytriton, onnxruntime; print('pytriton venv ready:', onnxruntime.__version__)"
