#!/usr/bin/env bash
# Install Debian's podman, buildah, runc and debootstrap for the container tests
# (tests/deploy/test_deploy_image.py) and `make image`. Idempotent: does nothing when all
# four are on PATH. runc, not crun: on a host with hybrid cgroups crun fails with "cgroups
# in hybrid mode not supported" (scripts/containers-conf.sh selects runc).
set -euo pipefail

missing=()
for tool in podman buildah runc debootstrap; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "podman, buildah, runc, debootstrap already installed: $(podman --version)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# With recommends (fuse-overlayfs, uidmap, catatonit, ...), as on the machine this was tested
# on; naming runc satisfies podman's "crun | runc" without crun.
$SUDO apt-get install -y -qq podman buildah runc debootstrap >/dev/null
echo "installed: $(podman --version), $(buildah --version | cut -d' ' -f1-3), $(runc --version | head -1)"
