#!/usr/bin/env bash
# Install the server (no torch, no compilers) into a fresh virtual environment.
#
#   scripts/install-serve.sh --flavor cpu|gpu VENV
#
# The Dockerfile's serve stages RUN exactly this, and CI runs it too (tests/deploy), so the
# image's install step is proven on every change. PYTHON picks the interpreter (default
# python3). The project is installed as a regular (non-editable) wheel from the source tree
# this script sits in; pins come from pyproject.toml via serve_requirements.py.
set -euo pipefail

flavor=""
if [ "${1:-}" = "--flavor" ]; then flavor="${2:-}"; shift 2; fi
venv="${1:-}"
if [ -z "$flavor" ] || [ -z "$venv" ]; then
    echo "usage: $0 --flavor cpu|gpu VENV" >&2
    exit 2
fi
src="$(cd "$(dirname "$0")/.." && pwd)"
# In an image build, the optional pip-ca secret (Dockerfile) is the CA bundle pip trusts.
if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi
python="${PYTHON:-python3}"

requirements="$(mktemp)"
trap 'rm -f "$requirements"' EXIT
"$python" "$src/scripts/serve_requirements.py" --flavor "$flavor" "$src/pyproject.toml" \
    >"$requirements"

# shellcheck source=stage-source.sh source-path=SCRIPTDIR
. "$src/scripts/stage-source.sh"
build_src="$(stage_source "$src")"
if [ "$build_src" != "$src" ]; then
    trap 'rm -f "$requirements"; rm -rf "$build_src"' EXIT
fi

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --no-cache-dir --quiet --upgrade pip
# One resolver run for the project and the serve extras together, so conflicts fail here.
"$venv/bin/python" -m pip install --no-cache-dir --quiet "$build_src" -r "$requirements"

# The serve image must never carry the training stack.
if "$venv/bin/python" -c "import torch" 2>/dev/null; then
    echo "install-serve: torch ended up in $venv; the serve image must not have it" >&2
    exit 1
fi
"$venv/bin/rnnserve" version >/dev/null
echo "install-serve: $flavor serve environment ready in $venv"
