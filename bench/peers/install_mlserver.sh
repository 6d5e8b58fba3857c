#!/usr/bin/env bash
# Idempotent: create (or reuse) the MLServer peer venv under .cache/peers/mlserver.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${RNNSERVE_PEERS_DIR:-$ROOT/.cache/peers}/mlserver"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import mlserver, onnxruntime, tokenizers" 2>/dev/null; then
  "$VENV/bin/pip" install --quiet --disable-pip-version-check \
    "mlserver==1.7.1" "onnxruntime==1.31.1" "tokenizers==0.23.3"
fi
"$VENV/bin/python" -c "import mlserver, onnxruntime; print('mlserver venv ready:', mlserver.__version__)"
