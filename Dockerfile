# memwatch's container image: `memwatch run` (the controller) by default,
# `memwatch agent` for the node agent.
#
#   make docker-build IMG=memwatch:dev
#   podman build -t memwatch:dev --build-arg BASE_IMAGE=localhost/memwatch-base:bookworm .
#
# BASE_IMAGE is any Debian-like image with python3 (3.11 or newer), its venv
# module (Debian: python3-venv) and CA certificates. Both stages use it, so
# the virtualenv built in the first runs unchanged in the second.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder
# pip's index settings, for builds behind a mirror; unset or empty: pip's own
# defaults. (A build argument is in the environment of RUN steps only, and
# does not reach the final image.) Behind a TLS-intercepting proxy, pass its
# CA bundle as a build secret instead of trusting hosts blindly:
#   --secret id=pip_cert,src="$PIP_CERT"
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore
RUN python3 -m venv /opt/memwatch
WORKDIR /src
COPY pyproject.toml README.md LICENSE constraints.txt ./
COPY controller ./controller
# Build the wheel, install it with its dependencies at the versions pinned in
# constraints.txt (a rebuild gets the same ones) into the venv, drop pip
# (the final image installs nothing), and prove the entry point starts.
# Empty index arguments are unset first: pip would take "" for an index.
RUN --mount=type=secret,id=pip_cert \
    set -eu; \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi; \
    for name in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST; do \
        eval "value=\${$name:-}"; [ -n "$value" ] || unset "$name"; \
    done; \
    /opt/memwatch/bin/pip wheel --no-deps --wheel-dir /wheels .; \
    /opt/memwatch/bin/pip install -c constraints.txt /wheels/memwatch-*.whl; \
    /opt/memwatch/bin/pip uninstall --yes pip; \
    /opt/memwatch/bin/memwatch --version

FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="memwatch" \
      org.opencontainers.image.description="Evicts Kubernetes pods that pass their memory-watch limit, before the kernel OOM killer fires." \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /opt/memwatch /opt/memwatch
# Bytecode was compiled at install time; the root filesystem is read-only in
# the chart, so Python must not try to write more.
ENV PATH=/opt/memwatch/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Numeric, so that Kubernetes' runAsNonRoot can verify it (the chart's
# podSecurityContext uses the same uid and gid).
USER 65532:65532
ENTRYPOINT ["memwatch"]
CMD ["run"]
