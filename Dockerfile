# syntax=docker/dockerfile:1
# The poolbudget operator image. Build: docker build -t ghcr.io/poolbudget/poolbudget:0.1.0 .
# Python 3.11 on Debian bookworm, the same as the machines the tests run on. The base is an argument: the tests
# build on a Debian bookworm image made locally with debootstrap (scripts/build-image.sh; Debian's python3 is 3.11
# too), since no registry is reachable there. Both stages use the same base, so the virtualenv's interpreter
# (a symlink to the base's python3) is there in the final stage.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# --- build: a virtualenv with the pinned dependencies and the operator; pip stays in this stage.
FROM ${PYTHON_IMAGE} AS build
# Where pip must trust an extra CA (a TLS-inspecting proxy), pass the bundle as a build secret:
#   --secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt --build-arg PIP_CERT=/run/secrets/pip-ca
# It is mounted for the RUN step that downloads only and is in no layer; without it pip uses its own CAs.
ARG PIP_CERT
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/poolbudget
WORKDIR /src
# Dependencies first, from the lock only: this layer is rebuilt only when the pins change. The build backend is
# pinned too (no isolated build environment fetching whatever setuptools is newest) and comes in here, so a
# change to the operator's code needs nothing from the index.
COPY requirements.lock ./
RUN --mount=type=secret,id=pip-ca \
    /opt/poolbudget/bin/pip install --only-binary=:all: --no-deps -r requirements.lock \
 && /opt/poolbudget/bin/pip install --only-binary=:all: --no-deps setuptools==80.9.0
COPY pyproject.toml README.md ./
COPY operator/ operator/
# Neither setuptools nor pip is needed to run, so both leave the virtualenv afterwards.
RUN /opt/poolbudget/bin/pip install --no-index --no-deps --no-build-isolation . \
 && /opt/poolbudget/bin/pip uninstall --yes setuptools pip \
 && /opt/poolbudget/bin/python -m compileall -q /opt/poolbudget
# Marks this stage's image, so scripts/build-image.sh can find the ones earlier builds left behind.
LABEL io.poolbudget.stage=build

# --- runtime: the virtualenv, a non-root user, nothing else.
FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="poolbudget" \
      org.opencontainers.image.description="Keeps the sum of every app's PostgreSQL connection pools within the database's limit" \
      org.opencontainers.image.source="https://github.com/poolbudget/poolbudget" \
      org.opencontainers.image.licenses="Apache-2.0"
# Nothing installs packages at run time: the base's pip, setuptools and wheel go (the official image), and so do
# the wheels python3-venv brings for ensurepip (a Debian base).
RUN if python3 -m pip --version >/dev/null 2>&1; then python3 -m pip uninstall --yes pip setuptools wheel; fi \
 && if dpkg-query --show python3-venv >/dev/null 2>&1; then \
      dpkg --purge python3-venv python3.11-venv python3-pip-whl python3-setuptools-whl; fi \
 && groupadd --system --gid 10001 poolbudget \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin poolbudget
COPY --from=build /opt/poolbudget /opt/poolbudget
ENV PATH=/opt/poolbudget/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
# Numeric, so that runAsNonRoot can verify it without resolving names.
USER 10001:10001
# 8080: kopf's liveness endpoint (/healthz); 9090: Prometheus metrics (/metrics).
EXPOSE 8080 9090
ENTRYPOINT ["poolbudget", "run"]
