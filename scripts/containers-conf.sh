#!/usr/bin/env bash
# Write a containers.conf for podman in a sandboxed (CI-like) host and print its path.
#
#   scripts/containers-conf.sh [FILE]     (default: $TMPDIR/rnnserve-containers.conf)
#
# Use it as CONTAINERS_CONF=$(scripts/containers-conf.sh) podman ... It sets what such a
# host needs (docs/deployment.md, "Podman on a sandboxed host"):
#   runtime = "runc"   crun fails there: "cgroups in hybrid mode not supported"
#   default_ulimits    podman's default nofile (1048576) is above the sandbox's hard limit
#                      ("setrlimit RLIMIT_NOFILE: Operation not permitted"); the file asks
#                      for this shell's own hard nofile limit, and nproc at most 32768
#                      (the sandbox refuses more even under a higher hard limit).
# On an ordinary host none of this is needed; the file is harmless there too.
set -euo pipefail

file="${1:-${TMPDIR:-/tmp}/rnnserve-containers.conf}"
ulimits=()
nofile="$(ulimit -Hn)"
nproc="$(ulimit -Hu)"
if [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; then nproc=32768; fi
if [ "$nofile" != unlimited ]; then ulimits+=("\"nofile=$nofile:$nofile\""); fi
ulimits+=("\"nproc=$nproc:$nproc\"")
joined="$(IFS=,; echo "${ulimits[*]:-}")"
{
    echo "# written by scripts/containers-conf.sh"
    echo "[containers]"
    echo "default_ulimits = [$joined]"
    echo "[engine]"
    echo 'runtime = "runc"'
} >"$file"
echo "$file"
