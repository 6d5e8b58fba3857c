# Two entry points, as the README's first lines say:
#   make demo  - install, train a small LSTM and GRU on the offline default data, export, serve
#   make test  - install everything the suite needs and run it (.ci/run calls exactly this)
# Images (podman; docs/deployment.md): make image, make image-gpu, make image-bundled,
# make base-image (the registry-free debootstrap base, made on demand by the others).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: demo test test-native install install-dev system-deps lint protos clean \
        image image-gpu image-bundled image-gpu-bundled image-models base-image

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# [serve,train]: what the demo needs (torch CPU pinned in pyproject).
$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[serve,train]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed-run
install-dev: $(VENV)/.installed-dev

# Debian's Prometheus (metrics tests), h2load (capacity bench), perf_analyzer (KServe v2
# tests) and podman with buildah, runc and debootstrap (container tests, make image); all
# idempotent.
system-deps:
	bash .ci/install-prometheus.sh
	bash .ci/install-h2load.sh
	bash scripts/native-frontend.sh toolchain
	bash bench/perf_analyzer.sh --install-only
	bash .ci/install-podman.sh

# rnnserve:<target> from the Dockerfile; the base is python:3.11-slim-bookworm when a
# registry serves it, else the debootstrap base (scripts/build-image.sh).
image:
	scripts/build-image.sh cpu
image-gpu:
	scripts/build-image.sh gpu
image-bundled:
	scripts/build-image.sh cpu-bundled
image-gpu-bundled:
	scripts/build-image.sh gpu-bundled
image-models:
	scripts/build-image.sh models
base-image:
	scripts/make-base-image.sh

demo: install
	$(BIN)/rnnserve demo

# The protocol suites once more, every server behind the native C++ front-end
# (--frontend native): the outside must not tell the two apart. Tests of the Python
# front-end processes (--workers 2 --frontend python) name their front-end and run as in
# the main pass; the soak and the sustained load run once, in the main pass (slow fuzz and
# races run here too when RNNSERVE_SLOW=1).
NATIVE_SUITES = tests/server/test_classify.py tests/server/test_errors.py \
        tests/server/test_streams.py tests/server/test_sequence_state.py \
        tests/server/test_sequence_quota.py tests/server/test_health.py \
        tests/server/test_shutdown.py tests/server/test_drain_resume.py \
        tests/server/test_live_repository.py tests/kserve tests/fault tests/metrics \
        tests/security/test_security_grpc_auth.py tests/security/test_security_app.py

test: install-dev system-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	$(MAKE) test-native

test-native: install-dev
	RNNSERVE_FRONTEND=native RNNSERVE_REQUIRE_NATIVE=1 $(BIN)/python -m pytest -q \
	    -p no:cacheprovider -k "not soak_rss and not sustained_load" $(NATIVE_SUITES)

lint: install-dev
	$(BIN)/ruff check .

protos: install-dev
	$(BIN)/python protos/generate.py

clean:
	rm -rf $(VENV) runs model_repository .pytest_cache
