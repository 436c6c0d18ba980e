# The gateway image: gateway serve, config mounted at /etc/gateway/model_profiles.yaml.
#   docker build -t vllm-thinking-gateway .                  on the official python:3.11-slim
#   scripts/container-build.sh                               with podman, on a local Debian base
# BASE_IMAGE may be any Debian/Ubuntu-like image with python3 (>= 3.11) and its venv module:
# the gateway is installed into its own virtual environment, /opt/gateway.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

# Build time only: where pip finds a CA bundle mounted into the build (a TLS-inspecting proxy's);
# the bundle itself is never copied into the image.
ARG PIP_CERT

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/gateway \
    PATH=/opt/gateway/bin:$PATH \
    HF_HOME=/tmp/huggingface \
    GATEWAY_CONFIG=/etc/gateway/model_profiles.yaml \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080

WORKDIR /app
# Dependencies in their own layer (a stand-in package with the real pyproject.toml), so a code
# change rebuilds only the small layer below it; the `redis` extra serves rate_storage: redis://
# (DL3013 takes '.[redis]' for an unpinned package from the index: it is this project).
COPY pyproject.toml README.md ./
# hadolint ignore=DL3013
RUN python3 -m venv /opt/gateway \
    && mkdir gateway && touch gateway/__init__.py \
    && pip install '.[redis]' \
    && rm -rf gateway build ./*.egg-info
COPY gateway ./gateway
RUN pip install --no-deps --force-reinstall . \
    && rm -rf build ./*.egg-info \
    && useradd --uid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin gateway \
    && mkdir -p /etc/gateway
COPY model_profiles.yaml /etc/gateway/model_profiles.yaml

USER 10001
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('GATEWAY_PORT', '8080'), timeout=2)"]

ENTRYPOINT ["gateway", "serve"]
CMD ["--config", "/etc/gateway/model_profiles.yaml"]
