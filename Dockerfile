# The runbook-operator image: build wheels, install them into a virtualenv, copy only that
# virtualenv onto a clean base. The final image has no compiler, no build backend, no pip
# cache and no wheel files, runs as uid/gid 65532 and writes nothing at start (it runs
# under readOnlyRootFilesystem, see manifests/deployment.yaml).
#
#   docker build -t runbook-operator:0.1.0 .
#   docker build --build-arg BASE_IMAGE=registry.example/python:3.11-slim -t runbook-operator:0.1.0 .
#
# Offline (no index reachable): put the wheels of the dependencies and of the build backend
# (setuptools>=77) in ./wheels and add `--build-arg WHEELS=prebuilt --network none`;
# tests/integration/image does exactly that.
#
# Works with BuildKit and with the classic builder (no RUN --mount, no `# syntax` line: a
# frontend image would have to be pulled).

# Any image with Python 3.11+ as /usr/local/bin/python3 (or on PATH), `sh` and pip >= 22.3.
ARG BASE_IMAGE=python:3.11-slim

# -- 1. build: a wheel of the project and of every dependency --------------------------------
FROM ${BASE_IMAGE} AS build
# pypi: resolve from the package index; prebuilt: only from ./wheels in the build context
ARG WHEELS=pypi
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# .dockerignore lets in only pyproject.toml, README.md, operator/ and wheels/ (when present)
COPY . .
RUN set -eu; \
    case "$WHEELS" in \
      pypi) python3 -m pip wheel --prefer-binary --wheel-dir /wheels . ;; \
      prebuilt) python3 -m pip wheel --no-index --find-links /src/wheels --wheel-dir /wheels . ;; \
      *) echo "WHEELS must be 'pypi' or 'prebuilt', not '$WHEELS'" >&2; exit 2 ;; \
    esac; \
    ls /wheels

# -- 2. install: only the wheels, no index, into a virtualenv without pip --------------------
FROM ${BASE_IMAGE} AS install
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
COPY --from=build /wheels /wheels
# pip compiles the .pyc files here, so a read-only container never needs to write them
RUN set -eu; \
    python3 -m venv --without-pip /opt/venv; \
    python3 -m pip --python /opt/venv/bin/python install --no-index --find-links /wheels runbook-operator; \
    /opt/venv/bin/runbook-operator --version

# -- 3. runtime ------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
LABEL org.opencontainers.image.title="runbook-operator" \
      org.opencontainers.image.description="A Kubernetes operator that automates the ISH Chat incident runbook" \
      org.opencontainers.image.licenses="Apache-2.0"
# a name for uid/gid 65532 (as in distroless "nonroot"), unless the base has one already
RUN set -eu; \
    grep -q '^[^:]*:[^:]*:65532:' /etc/group || echo 'nonroot:x:65532:' >> /etc/group; \
    grep -q '^[^:]*:[^:]*:65532:' /etc/passwd || echo 'nonroot:x:65532:65532:nonroot:/nonexistent:/usr/sbin/nologin' >> /etc/passwd
COPY --from=install /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["runbook-operator"]
CMD ["run", "--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz"]
