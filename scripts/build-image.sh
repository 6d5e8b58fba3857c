#!/usr/bin/env bash
# Build one target of the Dockerfile with podman (what `make image` / `make image-gpu` run).
#
#   scripts/build-image.sh TARGET [TAG]     TARGET: cpu gpu models cpu-bundled gpu-bundled
#                                           TAG default: rnnserve:TARGET
#
# The base image (the Dockerfile's PYTHON_IMAGE) is, in order:
#   1. BASE_IMAGE if set (any image with Python >= 3.11 and venv);
#   2. python:3.11-slim-bookworm when it is present or a registry serves it;
#   3. otherwise the registry-free debootstrap base of scripts/make-base-image.sh, made
#      once and reused while the machine keeps it.
# PIP_CA (default /etc/ssl/certs/ca-certificates.crt, when it exists) is passed as the
# build-time secret pip-ca: pip trusts it during the build, no layer keeps it.
# TORCH_WHEELS, a directory holding the torch CPU wheel (torch-2.13.0+cpu-...whl), is mounted
# read-only for the models stage's pip (find-links, and no torch index) where the CPU index
# (download.pytorch.org) cannot be reached. Extra podman build flags go in
# PODMAN_BUILD_FLAGS. CONTAINERS_CONF defaults to scripts/containers-conf.sh's file.
set -euo pipefail

target="${1:-}"
case "$target" in
    cpu|gpu|models|cpu-bundled|gpu-bundled) ;;
    *) echo "usage: $0 cpu|gpu|models|cpu-bundled|gpu-bundled [TAG]" >&2; exit 2 ;;
esac
tag="${2:-rnnserve:$target}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
podman="${PODMAN:-podman}"
registry_base="docker.io/library/python:3.11-slim-bookworm"
local_base="localhost/rnnserve-base:bookworm"

if [ -z "${CONTAINERS_CONF:-}" ]; then
    CONTAINERS_CONF="$("$here/containers-conf.sh")"
    export CONTAINERS_CONF
fi

base="${BASE_IMAGE:-}"
if [ -z "$base" ]; then
    if "$podman" image exists "$registry_base" \
        || timeout 120 "$podman" pull -q "$registry_base" >/dev/null 2>&1; then
        base="$registry_base"
    else
        echo "build-image: no registry serves $registry_base; using the debootstrap base"
        "$here/make-base-image.sh" "$local_base"
        base="$local_base"
    fi
fi

flags=(--format docker --target "$target" --tag "$tag" --build-arg "PYTHON_IMAGE=$base")
pip_ca="${PIP_CA:-/etc/ssl/certs/ca-certificates.crt}"
if [ -s "$pip_ca" ]; then flags+=(--secret "id=pip-ca,src=$pip_ca"); fi
if [ -n "${TORCH_WHEELS:-}" ]; then
    flags+=(--volume "$(cd "$TORCH_WHEELS" && pwd):/wheels:ro"
            --build-arg TORCH_WHEELS=/wheels --build-arg TORCH_INDEX_URL=)
fi
# shellcheck disable=SC2206  # word splitting of the extra flags is the point
flags+=(${PODMAN_BUILD_FLAGS:-})

echo "build-image: $tag from $base"
# stdin from /dev/null: a podman build with a terminal on stdin is stopped (SIGTTIN) when
# run as a background job.
"$podman" build "${flags[@]}" "$root" </dev/null
echo "build-image: $tag $("$podman" image inspect --format '{{.Size}}' "$tag" | \
    awk '{printf "%.0f MB", $1 / 1e6}')"
