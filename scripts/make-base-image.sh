#!/usr/bin/env bash
# Make the registry-free base image: Debian bookworm (Python 3.11 + venv) by debootstrap.
#
#   scripts/make-base-image.sh [TAG]      (default TAG: localhost/rnnserve-base:bookworm)
#
# For machines that reach a Debian mirror but no container registry. The image stands in
# for python:3.11-slim-bookworm as the Dockerfile's PYTHON_IMAGE (same Debian release, same
# Python minor); scripts/build-image.sh passes it with --build-arg. Idempotent: an image
# already tagged TAG is kept (delete it to rebuild). Needs root, debootstrap and podman.
# MIRROR picks the Debian mirror (default http://deb.debian.org/debian).
set -euo pipefail

tag="${1:-localhost/rnnserve-base:bookworm}"
mirror="${MIRROR:-http://deb.debian.org/debian}"
podman="${PODMAN:-podman}"

if "$podman" image exists "$tag"; then
    echo "make-base-image: $tag already present, reused"
    exit 0
fi
for tool in debootstrap "$podman"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "make-base-image: $tool not found (make system-deps installs it)" >&2
        exit 1
    fi
done

rootfs="$(mktemp -d)"
trap 'rm -rf "$rootfs"' EXIT
# minbase: essential packages and apt only; python3-venv brings python3 and ensurepip's
# wheels. passwd (groupadd/useradd for the image's fixed uid) is in every variant.
debootstrap --variant=minbase --include=python3-venv bookworm "$rootfs" "$mirror" \
    >"$rootfs.log" 2>&1 || { tail -40 "$rootfs.log" >&2; rm -f "$rootfs.log"; exit 1; }
rm -f "$rootfs.log"
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin \
       "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/* "$rootfs"/tmp/*

tar --numeric-owner -C "$rootfs" -c . | "$podman" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap --variant=minbase --include=python3-venv bookworm $mirror" \
    - "$tag" >/dev/null
"$podman" run --rm "$tag" python3 -c </dev/null \
    'import sys, venv; print("make-base-image: python", sys.version.split()[0])'
echo "make-base-image: $tag ready"
