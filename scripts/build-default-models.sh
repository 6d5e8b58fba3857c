#!/usr/bin/env bash
# Train the default LSTM and GRU and export them into a model repository.
#
#   scripts/build-default-models.sh REPOSITORY
#
# This is `rnnserve demo` without serving, so the image's bundled models are the demo's
# (same names, sizes and data). Environment:
#   RNNSERVE_BIN  the rnnserve command to use (default: rnnserve on PATH)
#   DATA          dataset name or path (default: vader-reviews, the demo's review corpus);
#                 "synthetic" generates a small labelled set (CI: no corpus download)
#   EPOCHS        training epochs per cell (default 10, the demo's)
#   WORKDIR       where checkpoints go (default: a temporary directory, removed after)
set -euo pipefail

repository="${1:-}"
if [ -z "$repository" ]; then
    echo "usage: $0 REPOSITORY" >&2
    exit 2
fi
rnnserve="${RNNSERVE_BIN:-rnnserve}"
# In an image build, the optional pip-ca secret (Dockerfile) is the CA bundle that the
# corpus download (pip download) trusts.
if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi
data="${DATA:-vader-reviews}"
epochs="${EPOCHS:-10}"

workdir="${WORKDIR:-}"
if [ -z "$workdir" ]; then
    workdir="$(mktemp -d)"
    trap 'rm -rf "$workdir"' EXIT
fi

if [ "$data" = "synthetic" ]; then
    data="$workdir/synthetic.tsv"
    python="$(dirname "$(command -v "$rnnserve")")/python"
    "$python" -c "import sys; from rnnserve.train.synthetic import write_synthetic_dataset as w; \
w(sys.argv[1], n=600, seed=0)" "$data"
fi

"$rnnserve" demo --no-serve --data "$data" --epochs "$epochs" \
    --out "$workdir/checkpoints" --repository "$repository"
ls "$repository"
echo "build-default-models: repository ready in $repository"
