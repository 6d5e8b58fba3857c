#!/usr/bin/env bash
# The image's entry point: serve the model repository.
#
#   start-server.sh [extra `rnnserve serve` flags]
#
# Configuration is by RNNSERVE_* environment variables (docs/server.md, docs/security.md);
# the image sets RNNSERVE_REPOSITORY=/models. `exec` makes the server PID 1's direct
# replacement, so SIGTERM from `docker stop` or Kubernetes reaches it and it drains.
set -euo pipefail

repository="${RNNSERVE_REPOSITORY:-model_repository}"
if [ ! -d "$repository" ] || [ -z "$(ls -A "$repository" 2>/dev/null)" ]; then
    echo "start-server: model repository '$repository' is missing or empty;" \
         "mount one (docker run -v ./model_repository:/models:ro ...) or use a bundled image" >&2
    exit 1
fi
exec "${RNNSERVE_BIN:-rnnserve}" serve "$@"
